# The paper's public datasets (DigestPath2019, BCNB, UBC-OCEAN, Camelyon16): fetch the source, list its slides in
# a checkpoint (ids are only known once the files are there), then convert each plain image to a pyramidal TIFF
# and each annotation to GeoJSON, one job per slide. See msamil/datasets and docs/paper_preset.md.
# Helper functions (external_raw_inputs, plan_value, ...) live in datasets_common.smk.


include: "datasets_common.smk"


# Compute nodes of many clusters have no internet access: downloads run where snakemake itself runs.
localrules:
    download_source,


rule download_source:
    output:
        manifest=f"{RESULTS}/{{dataset}}/raw/source.json",
    log:
        log_path("download_source", "{dataset}"),
    benchmark:
        bench_path("download_source", "{dataset}")
    wildcard_constraints:
        dataset=EXTERNAL_RE,
    retries: 3
    conda:
        "../envs/slide.yaml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=24 * 60,
    params:
        cfg=lambda wc: dataset_cfg(wc.dataset),
        root=lambda wc: dataset_root(wc.dataset),
    script:
        "../workflow/scripts/download.py"


checkpoint dataset_table:
    input:
        manifest=f"{RESULTS}/{{dataset}}/raw/source.json",
    output:
        table=f"{RESULTS}/{{dataset}}/raw/table.tsv",
        sources=f"{RESULTS}/{{dataset}}/raw/sources.tsv",
    log:
        log_path("dataset_table", "{dataset}"),
    benchmark:
        bench_path("dataset_table", "{dataset}")
    wildcard_constraints:
        dataset=EXTERNAL_RE,
    conda:
        "../envs/slide.yaml"
    threads: 1
    resources:
        mem_mb=lambda wc, attempt: 2000 * attempt,
        runtime=30,
    params:
        cfg=lambda wc: dataset_cfg(wc.dataset),
    script:
        "../workflow/scripts/dataset_table.py"


rule convert_slide:
    input:
        image=plan_value("source"),
    output:
        tiff=f"{RESULTS}/{{dataset}}/raw/slides/{{slide}}.tiff",
    log:
        log_path("convert_slide", "{dataset}", "{slide}"),
    benchmark:
        bench_path("convert_slide", "{dataset}", "{slide}")
    wildcard_constraints:
        dataset=EXTERNAL_RE,
    conda:
        "../envs/slide.yaml"
    threads: 2
    resources:
        mem_mb=lambda wc, attempt: 2000 * attempt,
        runtime=lambda wc, attempt: 60 * attempt,
    params:
        mpp=lambda wc: float(plan_value("mpp")(wc) or 0) or None,
    script:
        "../workflow/scripts/convert_slide.py"


rule convert_annotation:
    input:
        annotation=plan_files("annotation_source"),
        image=plan_value("source"),
    output:
        geojson=f"{RESULTS}/{{dataset}}/raw/lesions/{{slide}}.geojson",
    log:
        log_path("convert_annotation", "{dataset}", "{slide}"),
    benchmark:
        bench_path("convert_annotation", "{dataset}", "{slide}")
    wildcard_constraints:
        dataset=EXTERNAL_RE,
    conda:
        "../envs/slide.yaml"
    threads: 1
    resources:
        mem_mb=lambda wc, attempt: 2000 * attempt,
        runtime=lambda wc, attempt: 30 * attempt,
    params:
        kind=plan_value("annotation_kind"),
    script:
        "../workflow/scripts/convert_annotation.py"
