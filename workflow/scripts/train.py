"""Rule `train`: one MsaMIL-Net run (dataset x method x fold), see msamil.training.trainer.run_training."""

from msamil.training.trainer import run_training
from msamil.util.runlog import log_to

with log_to(snakemake.log[0]):
    selection = getattr(snakemake.input, "selection", None)
    run_training(
        dict(snakemake.params.config),
        snakemake.wildcards.dataset,
        snakemake.wildcards.method,
        int(snakemake.wildcards.fold),
        slides_tsv=snakemake.input.slides,
        folds_tsv=snakemake.input.folds,
        selection=selection if selection else None,
        out_dir=snakemake.params.run_dir,
        threads=snakemake.threads,
        resources=dict(snakemake.resources.items()),
    )
