# Shared helpers: config validation, paths, the inspect checkpoint's slide list, final targets.
import functools
import inspect
import json
import os
import re
import shutil
import sys
from types import SimpleNamespace

import pandas as pd
from snakemake.common import overwrite_function_params
from snakemake.exceptions import IncompleteCheckpointException
from snakemake.logging import logger
from snakemake.utils import validate

from msamil.datasets.registry import DATASETS as REGISTRY
from msamil.errors import ConfigError
from msamil.predict import check_predict
from msamil.slides.outcomes import read_decision, summary_line
from msamil.slides.slide_table import slide_id_problem
from msamil.slides.table import read_slide_table, row_dicts

validate(config, schema="../workflow/schemas/config.schema.yaml")

for _ds in config["datasets"]:
    if _ds not in config["dataset_config"]:
        raise ConfigError(
            f"config key 'datasets' names {_ds!r}, which has no entry under 'dataset_config' "
            f"(known: {sorted(config['dataset_config'])}); add one or use a preset (presets/paper.yaml)"
        )

RESULTS = "results"
LOGS = f"{RESULTS}/logs"
BENCH = f"{RESULTS}/benchmarks"
CACHE = f"{RESULTS}/{{dataset}}/cache/{{slide}}.h5"
DECISION = f"{RESULTS}/{{dataset}}/inspect/{{slide}}.json"
TISSUE_MASK = f"{RESULTS}/{{dataset}}/tissue/{{slide}}.png"
TISSUE_QC = f"{RESULTS}/{{dataset}}/tissue_qc/{{slide}}.png"
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


# The per-slide rules (inspect, tissue, cache and their gathers) also serve prediction sets, whose dataset
# wildcard is `predict/<name>`; every other rule only matches real datasets.
SLIDE_DATASET = "(?:predict/)?[A-Za-z0-9_]+"


wildcard_constraints:
    dataset="[A-Za-z0-9_]+",
    slide="[^/]+",
    fold="[0-9]+",
    method="[A-Za-z0-9_]+",
    name="[A-Za-z0-9_]+",


def per_job(func):
    """Mark a function Snakemake calls for every job of a per-slide rule. Snakemake inspects the signature of
    such a function each time it calls it (about a dozen times per job); with thousands of slides that was a
    large share of planning, so the signature is computed once here (Snakemake's own `overwrite_function_params`,
    which its path helpers use the same way)."""
    overwrite_function_params(func, inspect.signature(func).parameters)
    return func


def after_checkpoint(func, unpacked=False):
    """Input function `func`, which reads a checkpoint's output, planned the way Snakemake plans it while that
    checkpoint is pending (the checkpoint's output stands in as the job's only input, and the job is planned again
    once the checkpoint has run), without Snakemake's marker for an incomplete input: with that marker, every
    postprocessing pass over the DAG runs twice (Dag.update_incomplete_input_expand_jobs), which with thousands
    of per-slide jobs cost a sixth of a 2,000-slide dry run (benchmarks/bench_dag.py). `unpacked`: `func` returns
    a dict for unpack(). No functools.wraps: Snakemake would then pass `_inputs` what `func`'s signature asks.
    """

    def _inputs(wildcards):
        try:
            return func(wildcards)
        except IncompleteCheckpointException as pending:
            return (
                {"checkpoint": pending.targetfile} if unpacked else pending.targetfile
            )

    return _inputs


PREDICT = config.get("predict", {})
PREDICT_PREFIX = "predict/"


def predict_name(dataset):
    """The prediction set a dataset wildcard stands for (`predict/<name>`), or None for a real dataset."""
    return (
        dataset[len(PREDICT_PREFIX) :] if dataset.startswith(PREDICT_PREFIX) else None
    )


def dataset_cfg(dataset):
    """A dataset's settings. A prediction set (`predict/<name>`) is read like a cohort from its slide table, with
    the settings (classes, tissue, default_mpp) of the dataset whose models it applies.
    """
    name = predict_name(dataset)
    if name is None:
        return config["dataset_config"][dataset]
    spec = PREDICT[name]
    source = config["dataset_config"][spec["dataset"]]
    return {
        **source,
        "source": "local",
        "slide_table": spec["slide_table"],
        "default_mpp": spec.get("default_mpp", source.get("default_mpp")),
    }


def dataset_kind(dataset):
    """Where a dataset's slide table comes from: 'synthetic' (generated), 'registry' (a scanner of a public
    dataset's layout) or 'table' (the user's own slide_table)."""
    spec = dataset_cfg(dataset)
    if spec["source"] == "synthetic":
        return "synthetic"
    if dataset in REGISTRY:
        return "registry"
    return "table"


def check_dataset(dataset):
    """A dataset that is not synthetic nor a registry one is the user's cohort: it needs its slide table."""
    spec = dataset_cfg(dataset)
    if dataset_kind(dataset) == "table" and (
        spec["source"] != "local" or not spec.get("slide_table")
    ):
        raise ConfigError(
            f"dataset_config.{dataset}: {dataset!r} is not one of the registry datasets {sorted(REGISTRY)}, so "
            "it is read from your own slide table: set `source: local` and `slide_table: FILE` (a TSV/CSV with "
            "slide, patient, label, path; see README 'Your own slides')"
        )


for _ds in config["datasets"]:
    check_dataset(_ds)


for _name in PREDICT:
    check_predict(config, _name)
    check_dataset(PREDICT[_name]["dataset"])


def dataset_tissue(dataset):
    """Tissue settings of a dataset: the code defaults, `tissue:`, then dataset_config.<ds>.tissue key by key
    (msamil.tissue.settings). A prediction set uses those of the dataset whose models it applies.
    """
    from msamil.tissue.settings import tissue_settings

    name = predict_name(dataset)
    return tissue_settings(config, PREDICT[name]["dataset"] if name else dataset)


@functools.lru_cache(maxsize=64)
def _read_rows(path, mtime, require_label=True):
    table = read_slide_table(path, require_label=require_label)
    return table, row_dicts(table)


def raw_table(dataset):
    """The slide table of a dataset (the user's file, or the one the synthetic/registry rules write)."""
    kind = dataset_kind(dataset)
    if kind == "table":
        return dataset_cfg(dataset)["slide_table"]
    if kind == "synthetic":
        return checkpoints.synthetic_table.get(dataset=dataset).output.table
    return checkpoints.dataset_table.get(dataset=dataset).output.table


def raw_rows(dataset):
    """Every row of the dataset's slide table, indexed by slide (waits for the table's checkpoint if any)."""
    path = raw_table(dataset)
    return _read_rows(path, os.path.getmtime(path), predict_name(dataset) is None)[0]


def raw_row_dicts(dataset):
    """{slide: row dict} of the dataset's slide table (cached until the table changes); a prediction set's table
    needs no label column."""
    path = raw_table(dataset)
    return _read_rows(path, os.path.getmtime(path), predict_name(dataset) is None)[1]


@per_job
def slide_row(wildcards):
    """The job's own slide-table row, as a dict: the only thing its inspect job reads of the table."""
    rows = raw_row_dicts(wildcards.dataset)
    if wildcards.slide not in rows:
        raise ConfigError(
            f"slide {wildcards.slide!r} is not in the slide table of dataset {wildcards.dataset} "
            f"({raw_table(wildcards.dataset)})"
        )
    return dict(rows[wildcards.slide])


def inspected_slides_path(dataset):
    """inspect/slides.tsv: the slides that passed inspection (reading it waits for the inspect gather)."""
    return checkpoints.inspect.get(dataset=dataset).output.slides


@functools.lru_cache(maxsize=64)
def _read_ids(path, mtime):
    return pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)[
        "slide"
    ].tolist()


def passed_inspection(dataset):
    path = inspected_slides_path(dataset)
    return _read_ids(path, os.path.getmtime(path))


def dataset_targets(dataset):
    """Everything `all` builds for one dataset. Per-slide files are inputs of slides.tsv, so they are not listed
    here: thousands of targets would only slow down planning."""
    targets = [f"{RESULTS}/{dataset}/slides.tsv"]
    targets.append(f"{RESULTS}/{dataset}/splits/folds.tsv")
    targets += expand(
        f"{RESULTS}/{dataset}/lesion/fold{{fold}}/selection_summary.tsv", fold=FOLDS
    )
    targets += expand(
        f"{RESULTS}/{dataset}/runs/{{method}}/fold{{fold}}/metrics.json",
        method=METHODS,
        fold=FOLDS,
    )
    return targets


def final_targets(wildcards):
    targets = []
    for dataset in config["datasets"]:
        targets += dataset_targets(dataset)
    targets += expand(f"{RESULTS}/predict/{{name}}/predictions.tsv", name=list(PREDICT))
    return targets + aggregate_targets()


def summarise_datasets():
    """The end-of-run line per dataset: N slides used, M excluded (and where they are listed)."""
    for dataset in [*config["datasets"], *(PREDICT_PREFIX + n for n in PREDICT)]:
        line = summary_line(RESULTS, dataset)
        if line:
            logger.info(line)


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
