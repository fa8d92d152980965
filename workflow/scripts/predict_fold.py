"""Rule `predict_fold`: one fold's trained model on a prediction set's slides (msamil.predict.apply)."""

from msamil.predict.apply import predict_fold
from msamil.util.runlog import log_to

with log_to(snakemake.log[0]):
    selection = getattr(snakemake.input, "selection", None)
    predict_fold(
        dict(snakemake.params.config),
        snakemake.params.dataset,
        snakemake.params.method,
        int(snakemake.wildcards.fold),
        slides_tsv=snakemake.input.slides,
        best_pt=snakemake.input.model,
        selection=selection if selection else None,
        out_predictions=snakemake.output.predictions,
        out_attention=snakemake.output.attention,
        threads=snakemake.threads,
        resources=dict(snakemake.resources.items()),
    )
