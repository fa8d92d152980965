# rules for the baselines stage (see docs/CONTRACT.md): two-stage ABMIL, DINO + ABMIL and ICMIL + ABMIL on the
# same folds, backbone and initialisation as MsaMIL-Net. Outputs sit next to the MsaMIL-Net runs
# (runs/{method}/fold{k}/); the method wildcard only matches baseline kinds, so the two never clash.

BASELINE_KINDS = ("abmil", "dino_abmil", "icmil_abmil")


def uses_base_features(method):
    """abmil and ICMIL's round 0 start from the config backbone itself; reuse its fold-independent features."""
    spec = config["methods"][method]
    return spec["kind"] in ("abmil", "icmil_abmil") and not spec.get("model")


def baseline_inputs(wildcards):
    inputs = {
        "slides": f"{RESULTS}/{wildcards.dataset}/slides.tsv",
        "folds": f"{RESULTS}/{wildcards.dataset}/splits/folds.tsv",
        "caches": per_slide(f"{RESULTS}/{{dataset}}/cache/{{slide}}.h5")(wildcards),
    }
    if uses_base_features(wildcards.method):
        inputs["features"] = per_slide(
            f"{RESULTS}/{{dataset}}/features/base/{{slide}}.h5"
        )(wildcards)
    return inputs


def baseline_config(wildcards):
    """The config subset one baseline run reads (so an unrelated config change does not rerun it)."""
    return {
        "seed": config["seed"],
        "device": config.get("device", "auto"),
        "scales": config.get("scales"),
        "model": config["model"],
        "train": config.get("train", {}),
        "baselines": config.get("baselines", {}),
        "methods": {wildcards.method: config["methods"][wildcards.method]},
        "dataset_config": {
            wildcards.dataset: config["dataset_config"][wildcards.dataset]
        },
    }


rule features:
    input:
        cache=f"{RESULTS}/{{dataset}}/cache/{{slide}}.h5",
    output:
        h5=f"{RESULTS}/{{dataset}}/features/base/{{slide}}.h5",
    log:
        log_path("features", "{dataset}", "{slide}"),
    benchmark:
        bench_path("features", "{dataset}", "{slide}")
    conda:
        "../envs/torch.yaml"
    threads: 2
    resources:
        gpu=1,
        mem_mb=lambda wc, attempt: 4000 * attempt,
        runtime=lambda wc, attempt: 30 * attempt,
    params:
        model=config["model"],
        seed=config["seed"],
        chunk=config.get("baselines", {}).get("feature_chunk", 64),
        device=config.get("device", "auto"),
    script:
        "../workflow/scripts/baseline.py"


rule baseline:
    input:
        unpack(baseline_inputs),
    output:
        predictions=f"{RESULTS}/{{dataset}}/runs/{{method}}/fold{{fold}}/predictions.tsv",
        metrics=f"{RESULTS}/{{dataset}}/runs/{{method}}/fold{{fold}}/metrics.json",
        efficiency=f"{RESULTS}/{{dataset}}/runs/{{method}}/fold{{fold}}/efficiency.json",
        attention=f"{RESULTS}/{{dataset}}/runs/{{method}}/fold{{fold}}/attention.h5",
        train_log=f"{RESULTS}/{{dataset}}/runs/{{method}}/fold{{fold}}/train_log.tsv",
        seen=f"{RESULTS}/{{dataset}}/runs/{{method}}/fold{{fold}}/seen_slides.tsv",
        best=f"{RESULTS}/{{dataset}}/runs/{{method}}/fold{{fold}}/best.pt",
    log:
        log_path("baseline", "{dataset}", "{method}", "fold{fold}"),
    benchmark:
        bench_path("baseline", "{dataset}", "{method}", "fold{fold}")
    wildcard_constraints:
        method=method_regex(*BASELINE_KINDS),
    conda:
        "../envs/torch.yaml"
    threads: 2
    resources:
        gpu=1,
        mem_mb=lambda wc, attempt: 8000 * attempt,
        runtime=lambda wc, attempt: 240 * attempt,
    params:
        config=baseline_config,
        run_dir=lambda wc: f"{RESULTS}/{wc.dataset}/runs/{wc.method}/fold{wc.fold}",
    script:
        "../workflow/scripts/baseline.py"
