"""Rule `qc_sheets`: one QC sheet per usable slide for the report's QC category (msamil.reporting.figures.qc)."""

from pathlib import Path

from msamil.reporting.figures.qc import qc_sheets
from msamil.util.runlog import log_to

RESULTS = Path(snakemake.output.sheets).parents[1]  # outputs lie one level below the results root

with log_to(snakemake.log[0]):
    qc_sheets(RESULTS, snakemake.wildcards.dataset, snakemake.output.sheets)
