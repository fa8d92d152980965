"""Adapter for the `tissue` rule: msamil.tissue.detect.run_tissue_from_table for one slide of slides.tsv."""

from msamil.tissue.detect import run_tissue_from_table
from msamil.util.runlog import log_to

with log_to(snakemake.log[0]):
    run_tissue_from_table(
        snakemake.input.slides,
        snakemake.wildcards.slide,
        snakemake.output.mask,
        snakemake.output.geojson,
        snakemake.output.qc,
        dict(snakemake.params.tissue),
    )
