# Shared helpers: config validation, paths, the inspect checkpoint's slide list, final targets.
import os
import re
import shutil

import pandas as pd
from snakemake.utils import validate

validate(config, schema="../workflow/schemas/config.schema.yaml")

for _ds in config["datasets"]:
    if _ds not in config["dataset_config"]:
        raise ValueError(
            f"config key 'datasets' names {_ds!r}, which has no entry under 'dataset_config' "
            f"(known: {sorted(config['dataset_config'])}); add one or use a preset (presets/paper.yaml)"
        )

RESULTS = "results"
LOGS = f"{RESULTS}/logs"
BENCH = f"{RESULTS}/benchmarks"
CACHE = f"{RESULTS}/{{dataset}}/cache/{{slide}}.h5"
RUN_DIR = f"{RESULTS}/{{dataset}}/runs/{{method}}/fold{{fold}}"
FOLDS = list(range(config.get("splits", {}).get("folds", 5)))
METHODS = list(config["methods"])
# CPU threads per torch job: on a small CPU machine, parallel 1-thread jobs beat oversubscribed 2-thread ones.
TORCH_THREADS = config.get("torch_threads", 1)
# Torch rules hold one GPU each where jobs will use one (device cuda, or auto on a machine with an NVIDIA driver),
# so the local `gpu=1` cap of profiles/default serialises GPU jobs; on a CPU-only machine they claim none and
# run side by side. The SLURM profile sets gpu=1 per rule itself (set-resources), whatever the head node has.
GPU_PER_JOB = int(
    config.get("device", "auto") == "cuda"
    or (
        config.get("device", "auto") == "auto"
        and shutil.which("nvidia-smi") is not None
    )
)


wildcard_constraints:
    dataset="[A-Za-z0-9_]+",
    slide="[^/]+",
    fold="[0-9]+",
    method="[A-Za-z0-9_]+",


def slides_table(dataset):
    """The inspect checkpoint's table of usable slides; reading it waits for the checkpoint."""
    return pd.read_csv(
        inspected_slides_path(dataset), sep="\t", dtype=str, keep_default_na=False
    )


def inspected_slides_path(dataset):
    return checkpoints.inspect.get(dataset=dataset).output.slides


def usable_slides(dataset):
    """Slides that passed inspection; evaluating this waits for the inspect checkpoint."""
    return slides_table(dataset)["slide"].tolist()


def per_slide(pattern):
    """Input function expanding `pattern` over the usable slides of the job's dataset."""

    def _inputs(wildcards):
        return expand(
            pattern, dataset=wildcards.dataset, slide=usable_slides(wildcards.dataset)
        )

    return _inputs


def dataset_targets(dataset):
    """Everything `all` builds for one dataset, stage by stage (stages extend this as they land)."""
    slides = usable_slides(dataset)
    targets = [f"{RESULTS}/{dataset}/slides.tsv"]
    targets += expand(f"{RESULTS}/{dataset}/tissue/{{slide}}.png", slide=slides)
    targets += expand(CACHE, dataset=dataset, slide=slides)
    targets.append(f"{RESULTS}/{dataset}/splits/folds.tsv")
    targets += expand(
        f"{RESULTS}/{dataset}/lesion/fold{{fold}}/selection_summary.tsv", fold=FOLDS
    )
    targets += expand(
        f"{RUN_DIR}/metrics.json",
        dataset=dataset,
        method=METHODS,
        fold=FOLDS,
    )
    return targets


def final_targets(wildcards):
    targets = []
    for dataset in config["datasets"]:
        targets += dataset_targets(dataset)
    return targets + aggregate_targets()


def dataset_cfg(dataset):
    return config["dataset_config"][dataset]


def dataset_tissue(dataset):
    """Tissue settings of one dataset: `tissue:` overridden key by key by dataset_config.<ds>.tissue."""
    from msamil.tissue.settings import tissue_settings

    return tissue_settings(config, dataset)


def raw_table(dataset):
    """The source table every dataset provides: slide, patient, label, path, annotation, mpp."""
    return f"{RESULTS}/{dataset}/raw/table.tsv"


def raw_slide_inputs(wildcards):
    """Files the inspect checkpoint needs for a dataset: its source table and every slide file in it."""
    if dataset_cfg(wildcards.dataset)["source"] == "synthetic":
        return synthetic_raw_inputs(wildcards.dataset)
    return external_raw_inputs(wildcards.dataset)


def methods_of_kind(*kinds):
    return [m for m, spec in config["methods"].items() if spec["kind"] in kinds]


def names_regex(names):
    """A wildcard constraint matching exactly `names`, each escaped (never empty: an empty list matches nothing)."""
    return "|".join(re.escape(name) for name in names) or "(?!x)x"


def method_regex(*kinds):
    """A wildcard constraint matching exactly the methods of the given kinds."""
    return names_regex(methods_of_kind(*kinds))


def log_path(rule_name, *parts):
    return os.path.join(LOGS, rule_name, *parts) + ".log"


def bench_path(rule_name, *parts):
    return os.path.join(BENCH, rule_name, *parts) + ".tsv"
