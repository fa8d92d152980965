"""Snakemake adapter: list a fetched dataset's slides into raw/table.tsv and raw/sources.tsv."""

from msamil.datasets.registry import write_dataset_tables
from msamil.util.runlog import log_to

with log_to(snakemake.log[0]):
    write_dataset_tables(
        snakemake.wildcards.dataset,
        snakemake.input.manifest,
        snakemake.params.cfg,
        snakemake.output.table,
        snakemake.output.sources,
    )
