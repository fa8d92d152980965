"""Rule `sffm`: per slide and scale, the cache patches whose footprint is mostly lesion (msamil.lesion.sffm)."""

from msamil.lesion.sffm import run_sffm
from msamil.util.runlog import log_to

with log_to(snakemake.log[0]):
    run_sffm(
        snakemake.input.probmaps,
        snakemake.input.slides,
        snakemake.output.selection,
        snakemake.output.summary,
        prob_threshold=float(snakemake.params.prob_threshold),
        lesion_min=float(snakemake.params.lesion_min),
        fallback_k=int(snakemake.params.fallback_k),
    )
