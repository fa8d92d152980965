"""Rule `generate_synthetic`: draw one synthetic Aperio slide and its lesion GeoJSON (msamil.synthetic)."""

from msamil.runlog import log_to
from msamil.synthetic import generate_synthetic

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
