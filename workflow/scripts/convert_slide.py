"""Snakemake adapter: stream one plain JPEG/PNG image into a pyramidal TIFF with its MPP."""

from msamil.datasets.convert import convert_to_tiff
from msamil.util.runlog import log_to

with log_to(snakemake.log[0]):
    convert_to_tiff(
        snakemake.input.image,
        snakemake.output.tiff,
        snakemake.params.mpp,
        slide=snakemake.wildcards.slide,
        threads=snakemake.threads,
    )
