"""Rule `synthetic_table`: the synthetic dataset's raw table (msamil.synthetic.write_table)."""

from msamil.runlog import log_to
from msamil.synthetic import write_table

with log_to(snakemake.log[0]):
    write_table(
        snakemake.output.table,
        dict(snakemake.params.synthetic),
        int(snakemake.params.seed),
        snakemake.params.slide_pattern,
        snakemake.params.annotation_pattern,
    )
