"""Rule `predict`: the folds' predictions in predictions.tsv and a heatmap per slide (msamil.predict.report)."""

from pathlib import Path

from msamil.predict.report import write_predictions
from msamil.util.runlog import log_to

RESULTS = Path(snakemake.output.predictions).parents[2]  # results/predict/<name>/predictions.tsv

with log_to(snakemake.log[0]):
    write_predictions(
        RESULTS,
        snakemake.wildcards.name,
        snakemake.input.slides,
        list(snakemake.input.predictions),
        list(snakemake.input.attention),
        snakemake.params.scales,
        snakemake.params.method,
        snakemake.output.predictions,
        snakemake.output.heatmaps,
    )
