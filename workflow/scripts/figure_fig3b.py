"""Rule `fig3b_dino_vs_e2e`: per-fold paired DINO two-stage vs end-to-end scores (msamil.reporting.figures.paired)."""

from pathlib import Path

from msamil.reporting.figures.paired import fig3b_dino_vs_e2e
from msamil.util.runlog import log_to

RESULTS = Path(snakemake.output.png).parents[1]  # outputs lie one level below the results root

with log_to(snakemake.log[0]):
    fig3b_dino_vs_e2e(RESULTS, snakemake.params.datasets, snakemake.params.folds,
                      snakemake.output.png, snakemake.output.pdf, two_stage=snakemake.params.two_stage,
                      end_to_end=snakemake.params.end_to_end)
