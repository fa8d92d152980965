"""Rule `splits`: k stratified, patient-grouped folds of a dataset (msamil.splits)."""

from msamil.runlog import log_to
from msamil.splits import run_splits

with log_to(snakemake.log[0]):
    run_splits(
        snakemake.input.slides,
        snakemake.output.folds,
        folds=int(snakemake.params.folds),
        val_fraction=float(snakemake.params.val_fraction),
        seed=int(snakemake.params.seed),
    )
