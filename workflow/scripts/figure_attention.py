"""Rule `attention_heatmaps`: MsaMIL-Net attention per scale on held-out slides (msamil.reporting.figures.heatmaps)."""

from pathlib import Path

from msamil.reporting.figures.heatmaps import attention_figure
from msamil.util.runlog import log_to

RESULTS = Path(snakemake.output.png).parents[1]  # outputs lie one level below the results root

with log_to(snakemake.log[0]):
    attention_figure(RESULTS, snakemake.wildcards.dataset, snakemake.params.slides,
                     snakemake.params.folds, snakemake.output.png, snakemake.output.pdf,
                     method=snakemake.params.method, scales=snakemake.params.scales)
