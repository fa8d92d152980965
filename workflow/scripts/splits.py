"""Rule `splits`: k stratified, patient-grouped folds of a dataset (msamil.splits.folds)."""

from msamil.splits.folds import run_splits
from msamil.util.runlog import log_to

with log_to(snakemake.log[0]):
    run_splits(
        snakemake.input.slides,
        snakemake.output.folds,
        folds=int(snakemake.params.folds),
        val_fraction=float(snakemake.params.val_fraction),
        seed=int(snakemake.params.seed),
    )
