"""Rule `inspect_slide`: decide on one slide-table row (msamil.slides.inspection.inspect_row)."""

from msamil.slides.inspection import inspect_row
from msamil.util.runlog import log_to

with log_to(snakemake.log[0]):
    inspect_row(
        snakemake.params.spec["row"],
        snakemake.output.decision,
        snakemake.output.qc,
        dataset=snakemake.wildcards.dataset,
        classes=snakemake.params.spec["classes"],
        default_mpp=snakemake.params.spec["default_mpp"],
        tissue_cfg=snakemake.params.spec["tissue"],
    )
