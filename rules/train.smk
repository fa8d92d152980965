# rules for the train stage (see docs/CONTRACT.md): end-to-end MsaMIL-Net (and its ablations) per fold.
#
# Resume after a kill: the trainer writes last.pt every epoch and hard-links it to
# runs/{method}/fold{k}/.resume/last.pt, which is NOT a declared output. Snakemake deletes a job's declared outputs
# when the job fails and again before rerunning it (also under --rerun-incomplete), so last.pt itself cannot carry
# a resume; the undeclared mirror survives both and the rerun continues from the last finished epoch (it is
# ignored if the method's settings, the fold's slides or the seed changed, and removed once the run completes).
# `update()` was rejected: Snakemake then restores the pre-job version on failure, discarding the epochs just run.


def train_inputs(wildcards):
    """Slide table, folds and caches; plus the fold's SFFM selection unless the method has `sffm: false`."""
    from msamil.settings import method_settings

    inputs = {
        "slides": f"{RESULTS}/{wildcards.dataset}/slides.tsv",
        "folds": f"{RESULTS}/{wildcards.dataset}/splits/folds.tsv",
        "caches": per_slide(f"{RESULTS}/{{dataset}}/cache/{{slide}}.h5")(wildcards),
    }
    if method_settings(config, wildcards.method)["sffm"]:
        inputs["selection"] = (
            f"{RESULTS}/{wildcards.dataset}/lesion/fold{wildcards.fold}/selection.h5"
        )
    return inputs


def train_config(wildcards):
    """The config subset one run reads, so an unrelated config change does not retrain it."""
    return {
        "seed": config["seed"],
        "device": config.get("device", "auto"),
        "scales": config.get("scales"),
        "model": config["model"],
        "train": config.get("train", {}),
        "methods": {wildcards.method: config["methods"][wildcards.method]},
        "dataset_config": {
            wildcards.dataset: config["dataset_config"][wildcards.dataset]
        },
    }


RUN_DIR = f"{RESULTS}/{{dataset}}/runs/{{method}}/fold{{fold}}"


rule train:
    input:
        unpack(train_inputs),
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
    threads: 2
    resources:
        gpu=1,
        mem_mb=lambda wc, attempt: 8000 * attempt,
        runtime=lambda wc, attempt: 480 * attempt,
    params:
        config=train_config,
        run_dir=lambda wc: f"{RESULTS}/{wc.dataset}/runs/{wc.method}/fold{wc.fold}",
    script:
        "../workflow/scripts/train.py"
