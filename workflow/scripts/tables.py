"""Rule `tables`: main results, ablation, comparisons, efficiency and SFFM tables (msamil.reporting.tables)."""

from pathlib import Path

from msamil.reporting.tables import build_tables
from msamil.util.runlog import log_to

RESULTS = Path(snakemake.output.main_results_tsv).parents[1]  # outputs lie one level below the results root

with log_to(snakemake.log[0]):
    build_tables(RESULTS, snakemake.params.datasets, snakemake.params.methods,
                 snakemake.params.folds, Path(snakemake.output.main_results_tsv).parent,
                 scales=snakemake.params.scales, n_resamples=snakemake.params.bootstrap_resamples,
                 seed=snakemake.params.bootstrap_seed,
                 pretrained=snakemake.params.pretrained)
