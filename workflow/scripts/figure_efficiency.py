"""Rule `efficiency_plot`: accuracy vs throughput and training cost per method (msamil.reporting.figures.efficiency)."""

from pathlib import Path

from msamil.reporting.figures.efficiency import efficiency_figure
from msamil.util.runlog import log_to

RESULTS = Path(snakemake.output.png).parents[1]  # outputs lie one level below the results root

with log_to(snakemake.log[0]):
    efficiency_figure(RESULTS, snakemake.params.datasets, snakemake.params.methods,
                      snakemake.params.folds, snakemake.output.png, snakemake.output.pdf,
                      scales=snakemake.params.scales)
