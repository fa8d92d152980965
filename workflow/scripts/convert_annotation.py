"""Snakemake adapter: one slide's lesion annotation (mask, JSON or ASAP XML) -> GeoJSON polygons."""

from msamil.datasets.annotation_formats import convert_annotation
from msamil.util.runlog import log_to

with log_to(snakemake.log[0]):
    convert_annotation(
        snakemake.params.kind,
        snakemake.input.annotation,
        snakemake.output.geojson,
        slide=snakemake.wildcards.slide,
        image=snakemake.input.image,
    )
