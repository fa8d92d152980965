"""Checkpoint `slides`: the usable slides with their caches (slides.tsv) and every exclusion (excluded.tsv)."""

from msamil.slides.outcomes import gather_slides
from msamil.util.runlog import log_to

with log_to(snakemake.log[0]):
    gather_slides(
        snakemake.input.slides,
        snakemake.input.excluded,
        list(snakemake.input.caches),
        snakemake.output.slides,
        snakemake.output.excluded,
        snakemake.wildcards.dataset,
    )
