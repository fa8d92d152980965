# rules for the splits stage (see docs/CONTRACT.md): k folds shared by every method of a dataset.


rule splits:
    input:
        slides=inspected_slides,
    output:
        folds=f"{RESULTS}/{{dataset}}/splits/folds.tsv",
    log:
        log_path("splits", "{dataset}"),
    benchmark:
        bench_path("splits", "{dataset}")
    conda:
        "../envs/slide.yaml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    params:
        folds=len(FOLDS),
        val_fraction=config.get("splits", {}).get("val_fraction", 0.2),
        seed=config["seed"],
    script:
        "../workflow/scripts/splits.py"
