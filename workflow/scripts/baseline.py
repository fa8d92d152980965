"""Snakemake adapter for the baselines: rule `features` (frozen-backbone features of one slide) and rule
`baseline` (one baseline method on one fold), see msamil.baselines."""

from msamil.runlog import log_to

with log_to(snakemake.log[0]):
    if snakemake.rule == "features":
        from msamil.baselines.features import extract_features_job

        extract_features_job(
            snakemake.input.cache,
            snakemake.output.h5,
            slide=snakemake.wildcards.slide,
            model_cfg=dict(snakemake.params.model),
            seed=int(snakemake.params.seed),
            chunk=int(snakemake.params.chunk),
            device=snakemake.params.device,
        )
    else:
        from msamil.baselines.run import run_baseline

        features = getattr(snakemake.input, "features", None)
        run_baseline(
            config=dict(snakemake.params.config),
            dataset=snakemake.wildcards.dataset,
            method=snakemake.wildcards.method,
            fold=int(snakemake.wildcards.fold),
            slides_tsv=snakemake.input.slides,
            folds_tsv=snakemake.input.folds,
            cache_paths=list(snakemake.input.caches),
            feature_paths=list(features) if features is not None else None,
            run_dir=snakemake.params.run_dir,
            threads=snakemake.threads,
        )
