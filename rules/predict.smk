# Prediction on new slides (DESIGN.md section 9b): `predict: {<name>: {slide_table, dataset, method}}` applies the
# trained fold models of `dataset`/`method` to the slides of an unlabelled table. The new slides go through the
# same per-slide rules as a dataset's (inspect_slide, tissue, cache and the two gathers, with dataset wildcard
# `predict/<name>` and the source dataset's settings); then, per fold, that fold's lesion model selects the patches
# (SFFM methods) and its best.pt predicts; `predict` combines the folds. Functions: rules/inputs.smk.

PREDICT_DIR = f"{RESULTS}/predict/{{name}}"


rule predict_lesion_infer:
    input:
        slides=f"{PREDICT_DIR}/slides.tsv",
        model=predict_lesion_model,
    output:
        probmaps=f"{PREDICT_DIR}/lesion/fold{{fold}}/probmaps.h5",
    log:
        log_path("predict_lesion_infer", "{name}", "fold{fold}"),
    benchmark:
        bench_path("predict_lesion_infer", "{name}", "fold{fold}")
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


rule predict_sffm:
    input:
        probmaps=f"{PREDICT_DIR}/lesion/fold{{fold}}/probmaps.h5",
        slides=f"{PREDICT_DIR}/slides.tsv",
    output:
        selection=f"{PREDICT_DIR}/lesion/fold{{fold}}/selection.h5",
        summary=f"{PREDICT_DIR}/lesion/fold{{fold}}/selection_summary.tsv",
    log:
        log_path("predict_sffm", "{name}", "fold{fold}"),
    benchmark:
        bench_path("predict_sffm", "{name}", "fold{fold}")
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


rule predict_fold:
    input:
        unpack(predict_fold_inputs),
    output:
        predictions=f"{PREDICT_DIR}/fold{{fold}}/predictions.tsv",
        attention=f"{PREDICT_DIR}/fold{{fold}}/attention.h5",
    log:
        log_path("predict_fold", "{name}", "fold{fold}"),
    benchmark:
        bench_path("predict_fold", "{name}", "fold{fold}")
    conda:
        "../envs/torch.yaml"
    threads: TORCH_THREADS
    resources:
        gpu=GPU_PER_JOB,
        mem_mb=lambda wc, attempt: 8000 * attempt,
        runtime=lambda wc, attempt: 120 * attempt,
    params:
        config=predict_run_config,
        dataset=lambda wc: PREDICT[wc.name]["dataset"],
        method=lambda wc: PREDICT[wc.name]["method"],
    script:
        "../workflow/scripts/predict_fold.py"


rule predict:
    input:
        slides=f"{PREDICT_DIR}/slides.tsv",
        predictions=expand(
            f"{PREDICT_DIR}/fold{{fold}}/predictions.tsv",
            fold=FOLDS,
            allow_missing=True,
        ),
        attention=expand(
            f"{PREDICT_DIR}/fold{{fold}}/attention.h5", fold=FOLDS, allow_missing=True
        ),
    output:
        predictions=f"{PREDICT_DIR}/predictions.tsv",
        heatmaps=directory(f"{PREDICT_DIR}/heatmaps"),
    log:
        log_path("predict", "{name}"),
    benchmark:
        bench_path("predict", "{name}")
    conda:
        "../envs/report.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=60,
    params:
        scales=lambda wc: predict_method_scales(wc.name),
        method=lambda wc: PREDICT[wc.name]["method"],
    script:
        "../workflow/scripts/predict_gather.py"
