# rules for the baselines stage (see docs/CONTRACT.md): two-stage ABMIL, DINO + ABMIL and ICMIL + ABMIL on the
# same folds, backbone and initialisation as MsaMIL-Net. Outputs sit next to the MsaMIL-Net runs
# (runs/{method}/fold{k}/); the method wildcard only matches baseline kinds, so the two never clash.
# Features are computed inside each run, not per slide: their BatchNorm statistics come from the fold's training
# slides (DESIGN.md section 7), so they differ between folds, and one GPU job per slide would mostly pay start-up.

BASELINE_KINDS = ("abmil", "dino_abmil", "icmil_abmil")


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
