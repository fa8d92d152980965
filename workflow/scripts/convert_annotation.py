"""Snakemake adapter: one slide's lesion annotation (mask, JSON or ASAP XML) -> GeoJSON polygons."""

from msamil.datasets.annotations import convert_annotation
from msamil.runlog import log_to

with log_to(snakemake.log[0]):
    convert_annotation(
        snakemake.params.kind,
        snakemake.input.annotation,
        snakemake.output.geojson,
        slide=snakemake.wildcards.slide,
        image=snakemake.input.image,
    )
