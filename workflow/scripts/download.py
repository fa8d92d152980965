"""Snakemake adapter: fetch one dataset's source files (see msamil.datasets.download)."""

from msamil.datasets.download import fetch_source
from msamil.util.runlog import log_to

with log_to(snakemake.log[0]):
    fetch_source(snakemake.wildcards.dataset, snakemake.params.cfg, snakemake.params.root, snakemake.output.manifest)
