"""Rule `generate_synthetic`: draw one synthetic Aperio slide and its lesion GeoJSON (msamil.slides.synthetic)."""

from msamil.slides.synthetic import generate_synthetic
from msamil.util.runlog import log_to

with log_to(snakemake.log[0]):
    generate_synthetic(
        snakemake.input.table,
        snakemake.wildcards.slide,
        snakemake.output.svs,
        snakemake.output.geojson,
        seed=int(snakemake.params.seed),
        cfg_synthetic=dict(snakemake.params.synthetic),
        mpp=float(snakemake.params.mpp),
    )
