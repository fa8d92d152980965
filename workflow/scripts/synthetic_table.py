"""Rule `synthetic_table`: the synthetic dataset's raw table (msamil.slides.synthetic.write_table)."""

from msamil.slides.synthetic import write_table
from msamil.util.runlog import log_to

with log_to(snakemake.log[0]):
    write_table(
        snakemake.output.table,
        dict(snakemake.params.synthetic),
        int(snakemake.params.seed),
        snakemake.params.slide_pattern,
        snakemake.params.annotation_pattern,
    )
