"""Rule `fig2_sffm`: thumbnail, tissue mask, lesion probability and kept patches (msamil.reporting.figures.sffm)."""

from pathlib import Path

from msamil.reporting.figures.sffm import fig2_sffm
from msamil.util.runlog import log_to

RESULTS = Path(snakemake.output.png).parents[1]  # outputs lie one level below the results root

with log_to(snakemake.log[0]):
    fig2_sffm(RESULTS, [tuple(p) for p in snakemake.params.picks], snakemake.params.folds,
              snakemake.output.png, snakemake.output.pdf)
