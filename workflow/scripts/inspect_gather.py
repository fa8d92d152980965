"""Checkpoint `inspect`: the per-slide decisions of a dataset as inspect/slides.tsv and inspect/excluded.tsv."""

from msamil.slides.outcomes import gather_inspection
from msamil.util.runlog import log_to

with log_to(snakemake.log[0]):
    gather_inspection(
        list(snakemake.input),
        snakemake.output.slides,
        snakemake.output.excluded,
        snakemake.wildcards.dataset,
        unnamed=list(snakemake.params.unnamed),
    )
