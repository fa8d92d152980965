# rules for the baselines stage (see docs/CONTRACT.md): two-stage ABMIL, DINO + ABMIL and ICMIL + ABMIL on the
# same folds, backbone and initialisation as MsaMIL-Net. Outputs sit next to the MsaMIL-Net runs
# (runs/{method}/fold{k}/); the method wildcard only matches baseline kinds, so the two never clash.

BASELINE_KINDS = ("abmil", "dino_abmil", "icmil_abmil")


rule features:
    input:
        cache=CACHE,
    output:
        h5=f"{RESULTS}/{{dataset}}/features/base/{{slide}}.h5",
    log:
        log_path("features", "{dataset}", "{slide}"),
    benchmark:
        bench_path("features", "{dataset}", "{slide}")
    conda:
        "../envs/torch.yaml"
    threads: TORCH_THREADS
    resources:
        gpu=GPU_PER_JOB,
        mem_mb=lambda wc, attempt: 4000 * attempt,
        runtime=lambda wc, attempt: 30 * attempt,
    params:
        model=config["model"],
        seed=config["seed"],
        chunk=config.get("baselines", {}).get("feature_chunk", 64),
        device=config.get("device", "auto"),
    script:
        "../workflow/scripts/features.py"


rule baseline:
    input:
        unpack(baseline_inputs),
        weights=method_weights,
    output:
        predictions=f"{RUN_DIR}/predictions.tsv",
        metrics=f"{RUN_DIR}/metrics.json",
        efficiency=f"{RUN_DIR}/efficiency.json",
        attention=f"{RUN_DIR}/attention.h5",
        train_log=f"{RUN_DIR}/train_log.tsv",
        seen=f"{RUN_DIR}/seen_slides.tsv",
        best=f"{RUN_DIR}/best.pt",
    log:
        log_path("baseline", "{dataset}", "{method}", "fold{fold}"),
    benchmark:
        bench_path("baseline", "{dataset}", "{method}", "fold{fold}")
    wildcard_constraints:
        method=method_regex(*BASELINE_KINDS),
    conda:
        "../envs/torch.yaml"
    threads: TORCH_THREADS
    resources:
        gpu=GPU_PER_JOB,
        mem_mb=lambda wc, attempt: 8000 * attempt,
        runtime=lambda wc, attempt: 240 * attempt,
    params:
        config=run_config,
        run_dir=lambda wc: RUN_DIR.format(
            dataset=wc.dataset, method=wc.method, fold=wc.fold
        ),
    script:
        "../workflow/scripts/baseline.py"
