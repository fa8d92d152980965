# rules for the train stage (see docs/CONTRACT.md): end-to-end MsaMIL-Net (and its ablations) per fold.
#
# Resume after a kill: the trainer writes last.pt every epoch and a copy of it (with its sha256 in last.pt.sha256)
# to runs/{method}/fold{k}/.resume/, which is NOT a declared output. Snakemake deletes a job's declared outputs
# when the job fails and again before rerunning it (also under --rerun-incomplete), so last.pt itself cannot carry
# a resume; the undeclared mirror survives both and the rerun continues from the last finished epoch, rewriting
# best.pt from the best weights kept in last.pt (it is ignored if the method's settings, the fold's slides or the
# seed changed, set aside as last.pt.damaged if it fails its checksum or will not load, and removed once the run
# completes).
# `update()` was rejected: Snakemake then restores the pre-job version on failure, discarding the epochs just run.


rule train:
    input:
        unpack(train_inputs),
        weights=method_weights,
    output:
        predictions=f"{RUN_DIR}/predictions.tsv",
        metrics=f"{RUN_DIR}/metrics.json",
        efficiency=f"{RUN_DIR}/efficiency.json",
        best=f"{RUN_DIR}/best.pt",
        last=f"{RUN_DIR}/last.pt",
        train_log=f"{RUN_DIR}/train_log.tsv",
        attention=f"{RUN_DIR}/attention.h5",
    log:
        log_path("train", "{dataset}", "{method}", "fold{fold}"),
    benchmark:
        bench_path("train", "{dataset}", "{method}", "fold{fold}")
    wildcard_constraints:
        method=method_regex("msamil"),
    conda:
        "../envs/torch.yaml"
    threads: TORCH_THREADS
    resources:
        gpu=GPU_PER_JOB,
        mem_mb=lambda wc, attempt: 8000 * attempt,
        runtime=lambda wc, attempt: 480 * attempt,
    params:
        config=run_config,
        run_dir=lambda wc: RUN_DIR.format(
            dataset=wc.dataset, method=wc.method, fold=wc.fold
        ),
    script:
        "../workflow/scripts/train.py"
