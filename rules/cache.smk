# rules for the cache stage (see docs/CONTRACT.md): one aligned 20x/10x/5x HDF5 patch cache per slide. A slide
# that fails here (a corrupt tile inside tissue, no tissue patches) gets a failure record in place of its cache
# and is listed in excluded.tsv by the `slides` gather; every other slide goes on.


rule cache:
    input:
        unpack(stage_inputs(CACHE)),
        mask=TISSUE_MASK,
        geojson=f"{RESULTS}/{{dataset}}/tissue/{{slide}}.geojson",
    output:
        h5=CACHE,
    log:
        log_path("cache", "{dataset}", "{slide}"),
    benchmark:
        bench_path("cache", "{dataset}", "{slide}")
    wildcard_constraints:
        dataset=SLIDE_DATASET,
    conda:
        "../envs/slide.yaml"
    threads: 1
    resources:
        mem_mb=slide_resource("cache", "mem_mb"),
        runtime=slide_resource("cache", "runtime"),
    params:
        mpp_20x=config["mpp_20x"],
        patch_px=config["patch_px"],
        tissue_min=config["cache"]["tissue_min"],
        encoding=config["cache"]["encoding"],
        jpeg_quality=config["cache"]["jpeg_quality"],
    script:
        "../workflow/scripts/cache.py"
