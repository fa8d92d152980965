"""Rule `roc_curves`: pooled out-of-fold ROC of every method on one dataset (msamil.reporting.figures.curves)."""

from pathlib import Path

from msamil.reporting.figures.curves import roc_figure
from msamil.util.runlog import log_to

RESULTS = Path(snakemake.output.png).parents[1]  # outputs lie one level below the results root

with log_to(snakemake.log[0]):
    roc_figure(RESULTS, snakemake.wildcards.dataset, snakemake.params.methods,
               snakemake.params.folds, snakemake.output.png, snakemake.output.pdf, scales=snakemake.params.scales)
