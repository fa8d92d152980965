# Tissue segmentation, one job per slide that passed inspection: mask PNG at tissue.seg_mpp, contours (GeoJSON),
# QC overlay. Its inputs are the slide's own decision file and slide file, never the whole table: editing another
# slide's row does not rerun it. A slide that fails here is excluded (msamil.tissue.detect.run_tissue_from_decision).


rule tissue:
    input:
        unpack(stage_inputs(TISSUE_MASK, TISSUE_QC)),
    output:
        mask=TISSUE_MASK,
        geojson=f"{RESULTS}/{{dataset}}/tissue/{{slide}}.geojson",
        qc=TISSUE_QC,
    log:
        log_path("tissue", "{dataset}", "{slide}"),
    benchmark:
        bench_path("tissue", "{dataset}", "{slide}")
    wildcard_constraints:
        dataset=SLIDE_DATASET,
    conda:
        "../envs/slide.yaml"
    threads: 1
    resources:
        mem_mb=slide_resource("tissue", "mem_mb"),
        runtime=slide_resource("tissue", "runtime"),
    params:
        tissue=tissue_params,
    script:
        "../workflow/scripts/tissue.py"
