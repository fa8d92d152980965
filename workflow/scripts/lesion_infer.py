"""Rule `lesion_infer`: a lesion probability map of every usable slide with one fold's segmenter."""

from msamil.lesion.unetpp import run_lesion_infer
from msamil.util.runlog import log_to

with log_to(snakemake.log[0]):
    run_lesion_infer(
        snakemake.input.slides,
        snakemake.input.model,
        snakemake.output.probmaps,
        device=snakemake.params.device,
        threads=snakemake.threads,
        resources=dict(snakemake.resources.items()),
    )
