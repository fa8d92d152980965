"""Adapter for the `inspect` checkpoint: msamil.slides.inspection.inspect_dataset on one dataset's raw table."""

from msamil.slides.inspection import inspect_dataset
from msamil.util.runlog import log_to

with log_to(snakemake.log[0]):
    inspect_dataset(
        snakemake.params.table,
        snakemake.params.dataset_cfg,
        snakemake.output.slides,
        snakemake.output.excluded,
        snakemake.output.qc,
        dataset=snakemake.wildcards.dataset,
        tissue_cfg=snakemake.params.tissue,
    )
