# The inspect checkpoint: every slide of a dataset is opened, checked and either listed in slides.tsv or excluded
# with a reason in excluded.tsv. Later rules expand over slides.tsv only (usable_slides in common.smk).


checkpoint inspect:
    input:
        raw_slide_inputs,
    output:
        slides=f"{RESULTS}/{{dataset}}/slides.tsv",
        excluded=f"{RESULTS}/{{dataset}}/excluded.tsv",
        qc=directory(f"{RESULTS}/{{dataset}}/qc"),
    log:
        log_path("inspect", "{dataset}"),
    benchmark:
        bench_path("inspect", "{dataset}")
    conda:
        "../envs/slide.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=60,
    params:
        table=lambda wc: raw_table(wc.dataset),
        dataset_cfg=lambda wc: dataset_cfg(wc.dataset),
        tissue=lambda wc: dataset_tissue(wc.dataset),
    script:
        "../workflow/scripts/inspect_slides.py"
