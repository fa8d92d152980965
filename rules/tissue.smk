# Tissue segmentation, one job per usable slide: mask PNG at tissue.seg_mpp, contours (GeoJSON), QC overlay.


rule tissue:
    input:
        slides=lambda wc: checkpoints.inspect.get(dataset=wc.dataset).output.slides,
        slide=slide_file,
    output:
        mask=f"{RESULTS}/{{dataset}}/tissue/{{slide}}.png",
        geojson=f"{RESULTS}/{{dataset}}/tissue/{{slide}}.geojson",
        qc=f"{RESULTS}/{{dataset}}/tissue_qc/{{slide}}.png",
    log:
        log_path("tissue", "{dataset}", "{slide}"),
    benchmark:
        bench_path("tissue", "{dataset}", "{slide}")
    conda:
        "../envs/slide.yaml"
    threads: 1
    resources:
        mem_mb=3000,
        runtime=20,
    params:
        tissue=lambda wc: dataset_tissue(wc.dataset),
    script:
        "../workflow/scripts/tissue.py"
