"""Rule `fig3a_unetpp_iou`: U-Net++ validation IoU per epoch (msamil.reporting.figures.curves)."""

from pathlib import Path

from msamil.reporting.figures.curves import fig3a_unetpp_iou
from msamil.util.runlog import log_to

RESULTS = Path(snakemake.output.png).parents[1]  # outputs lie one level below the results root

with log_to(snakemake.log[0]):
    fig3a_unetpp_iou(RESULTS, snakemake.params.datasets, snakemake.params.folds,
                     snakemake.output.png, snakemake.output.pdf)
