"""Adapter for the `tissue` rule: msamil.tissue.run_tissue_from_table for one slide of slides.tsv."""

from msamil.runlog import log_to
from msamil.tissue import run_tissue_from_table

with log_to(snakemake.log[0]):
    run_tissue_from_table(
        snakemake.input.slides,
        snakemake.wildcards.slide,
        snakemake.output.mask,
        snakemake.output.geojson,
        snakemake.output.qc,
        dict(snakemake.params.tissue),
    )
