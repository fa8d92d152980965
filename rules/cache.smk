# rules for the cache stage (see docs/CONTRACT.md): one aligned 20x/10x/5x HDF5 patch cache per slide.


rule cache:
    input:
        mask=f"{RESULTS}/{{dataset}}/tissue/{{slide}}.png",
        slides=f"{RESULTS}/{{dataset}}/slides.tsv",
    output:
        h5=CACHE,
    log:
        log_path("cache", "{dataset}", "{slide}"),
    benchmark:
        bench_path("cache", "{dataset}", "{slide}")
    conda:
        "../envs/slide.yaml"
    threads: 1
    resources:
        mem_mb=lambda wc, attempt: 2000 * attempt,
        runtime=lambda wc, attempt: 60 * attempt,
    params:
        mpp_20x=config["mpp_20x"],
        patch_px=config["patch_px"],
        tissue_min=config["cache"]["tissue_min"],
        encoding=config["cache"]["encoding"],
        jpeg_quality=config["cache"]["jpeg_quality"],
    script:
        "../workflow/scripts/cache.py"
