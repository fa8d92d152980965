"""Rule `fetch_weights` (local): download a backbone's pretrained weights once (msamil.models.weights)."""

from msamil.models.weights import fetch_weights
from msamil.util.runlog import log_to

with log_to(snakemake.log[0]):
    fetch_weights(dict(snakemake.params.model), snakemake.output.weights)
