"""Rule `lesion_train`: the U-Net++ lesion segmenter of one fold, trained on that fold's training slides."""

from msamil.lesion.unetpp import run_lesion_train
from msamil.util.runlog import log_to

with log_to(snakemake.log[0]):
    run_lesion_train(
        snakemake.input.slides,
        snakemake.input.folds,
        int(snakemake.wildcards.fold),
        dict(snakemake.params.lesion),
        snakemake.output.model,
        snakemake.output.history,
        seed=int(snakemake.params.seed),
        device=snakemake.params.device,
        threads=snakemake.threads,
        resources=dict(snakemake.resources.items()),
    )
