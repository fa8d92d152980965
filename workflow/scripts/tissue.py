"""Adapter for the `tissue` rule: msamil.tissue.detect.run_tissue_from_decision for one inspected slide."""

from msamil.tissue.detect import run_tissue_from_decision
from msamil.util.runlog import log_to

with log_to(snakemake.log[0]):
    run_tissue_from_decision(
        snakemake.input.decision,
        snakemake.output.mask,
        snakemake.output.geojson,
        snakemake.output.qc,
        dict(snakemake.params.tissue),
    )
