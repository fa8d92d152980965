# rules for the lesion stage (see docs/CONTRACT.md): per-fold U-Net++ lesion segmentation and SFFM selection.
# slides.tsv is their only per-slide input: it changes whenever a slide, its annotation or its cache does.

LESION = config.get("lesion", {})
LESION_DIR = f"{RESULTS}/{{dataset}}/lesion/fold{{fold}}"


rule lesion_train:
    input:
        slides=inspected_slides,
        folds=f"{RESULTS}/{{dataset}}/splits/folds.tsv",
    output:
        model=f"{LESION_DIR}/unetpp.pt",
        history=f"{LESION_DIR}/history.tsv",
    log:
        log_path("lesion_train", "{dataset}", "fold{fold}"),
    benchmark:
        bench_path("lesion_train", "{dataset}", "fold{fold}")
    conda:
        "../envs/torch.yaml"
    threads: TORCH_THREADS
    resources:
        mem_mb=8000,
        runtime=240,
        gpu=GPU_PER_JOB,
    params:
        lesion=LESION,
        seed=config["seed"],
        device=config.get("device", "auto"),
    script:
        "../workflow/scripts/lesion_train.py"


rule lesion_infer:
    input:
        slides=inspected_slides,
        model=f"{LESION_DIR}/unetpp.pt",
    output:
        probmaps=f"{LESION_DIR}/probmaps.h5",
    log:
        log_path("lesion_infer", "{dataset}", "fold{fold}"),
    benchmark:
        bench_path("lesion_infer", "{dataset}", "fold{fold}")
    conda:
        "../envs/torch.yaml"
    threads: TORCH_THREADS
    resources:
        mem_mb=8000,
        runtime=120,
        gpu=GPU_PER_JOB,
    params:
        device=config.get("device", "auto"),
    script:
        "../workflow/scripts/lesion_infer.py"


rule sffm:
    input:
        probmaps=f"{LESION_DIR}/probmaps.h5",
        slides=inspected_slides,
    output:
        selection=f"{LESION_DIR}/selection.h5",
        summary=f"{LESION_DIR}/selection_summary.tsv",
    log:
        log_path("sffm", "{dataset}", "fold{fold}"),
    benchmark:
        bench_path("sffm", "{dataset}", "fold{fold}")
    conda:
        "../envs/torch.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=60,
    params:
        prob_threshold=LESION.get("prob_threshold", 0.5),
        lesion_min=LESION.get("lesion_min", 0.7),
        fallback_k=LESION.get("fallback_k", 8),
    script:
        "../workflow/scripts/sffm.py"
