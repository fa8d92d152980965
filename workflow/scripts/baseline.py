"""Rule `baseline`: one baseline method (abmil, dino_abmil, icmil_abmil) on one fold (msamil.baselines.run)."""

from msamil.baselines.run import run_baseline
from msamil.util.runlog import log_to

with log_to(snakemake.log[0]):
    run_baseline(
        config=dict(snakemake.params.config),
        dataset=snakemake.wildcards.dataset,
        method=snakemake.wildcards.method,
        fold=int(snakemake.wildcards.fold),
        slides_tsv=snakemake.input.slides,
        folds_tsv=snakemake.input.folds,
        run_dir=snakemake.params.run_dir,
        threads=snakemake.threads,
        resources=dict(snakemake.resources.items()),
    )
