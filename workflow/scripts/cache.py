"""Rule `cache`: build the aligned multi-scale patch cache of one slide (msamil.cache.writer)."""

from msamil.cache.writer import build_cache_from_decision
from msamil.util.runlog import log_to

with log_to(snakemake.log[0]):
    build_cache_from_decision(
        snakemake.input.decision,
        snakemake.input.mask,
        snakemake.input.geojson,
        snakemake.output.h5,
        mpp_20x=snakemake.params.mpp_20x,
        patch_px=snakemake.params.patch_px,
        tissue_min=dict(snakemake.params.tissue_min),
        encoding=snakemake.params.encoding,
        jpeg_quality=snakemake.params.jpeg_quality,
    )
