"""Rule `features`: frozen-backbone features of one slide's 20x patches (msamil.baselines.features)."""

from msamil.baselines.features import extract_features_job
from msamil.util.runlog import log_to

with log_to(snakemake.log[0]):
    extract_features_job(
        snakemake.input.cache,
        snakemake.output.h5,
        slide=snakemake.wildcards.slide,
        model_cfg=dict(snakemake.params.model),
        seed=int(snakemake.params.seed),
        chunk=int(snakemake.params.chunk),
        device=snakemake.params.device,
    )
