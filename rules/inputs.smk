# Input, parameter and resource functions of the stage rules. They live apart from the rules (snakemake --lint:
# no functions in rule files) and run lazily, so constants of the rule files are available when they are called.


def inspected_slides(wildcards):
    """The final slides.tsv: usable slides with their caches and checksums, the one manifest later stages read."""
    return f"{RESULTS}/{wildcards.dataset}/slides.tsv"


def _produced_here(path):
    """Files under results/ are made by the workflow's own rules (converted or generated slides)."""
    return path.startswith(f"{RESULTS}/") or path.startswith(f"./{RESULTS}/")


def _row_files(dataset, row):
    """The slide and annotation files of a row that are inputs: those the workflow makes, and the user's own
    that exist (a missing one is the inspect job's to report, not a reason to stop the whole DAG).
    """
    if row["exclude"]:
        return {}
    files = {}
    for key in ("path", "annotation"):
        value = row[key]
        if value and (_produced_here(value) or os.path.exists(value)):
            files["slide" if key == "path" else key] = value
    return files


@per_job
def inspect_slide_inputs(wildcards):
    return _row_files(wildcards.dataset, slide_row(wildcards))


def all_decisions(wildcards):
    """Every row's decision file: what the inspect gather reads (rows whose id cannot name a file have none)."""
    rows = raw_row_dicts(wildcards.dataset)
    named = [s for s in rows if not slide_id_problem(s)]
    return expand(DECISION, dataset=wildcards.dataset, slide=named)


def unnamed_rows(wildcards):
    """Rows whose slide id cannot name a file (`..`, `a/b`): excluded with the reason, without a job."""
    out = []
    for slide, row in raw_row_dicts(wildcards.dataset).items():
        problem = slide_id_problem(slide)
        if problem:
            out.append(
                {
                    "slide": slide,
                    "path": row["path"],
                    "stage": "inspect",
                    "reason": f"slide id {slide!r} {problem}",
                    "fix": "rename the slide in the slide table (letters, digits, '_', '-', '.')",
                }
            )
    return out


def passed_caches(wildcards):
    """The cache (or failure record) of every slide that passed inspection: what the `slides` gather reads."""
    return expand(
        CACHE, dataset=wildcards.dataset, slide=passed_inspection(wildcards.dataset)
    )


def _explicit_target(path):
    targets = workflow.dag_settings.targets if workflow.dag_settings else ()
    return any(os.path.normpath(t) == os.path.normpath(path) for t in targets)


def _current_exclusion(dataset, slide, decision_path):
    """The exclusion in the slide's decision file, if that file is up to date with the slide's row and file."""
    if not os.path.exists(decision_path):
        return None
    decision = read_decision(decision_path)
    row = raw_row_dicts(dataset)[slide]
    if decision.get("source_row") != row:
        return None  # the row changed since: inspection will run again
    if row["path"] and os.path.exists(row["path"]):
        if os.path.getmtime(row["path"]) > os.path.getmtime(decision_path):
            return None
    return decision["excluded"]


def stage_inputs(*outputs):
    """Input function of the per-slide stages after inspect: the slide's decision file and its slide file.

    Asked for explicitly (`snakemake results/<ds>/cache/<slide>.h5`) for a slide that inspection excluded, it
    stops the run with one line giving the reason instead of planning a job that cannot work.
    """

    @per_job
    def _inputs(wildcards):
        decision = DECISION.format(dataset=wildcards.dataset, slide=wildcards.slide)
        asked = [
            o.format(dataset=wildcards.dataset, slide=wildcards.slide) for o in outputs
        ]
        if any(_explicit_target(a) for a in asked):
            excluded = _current_exclusion(wildcards.dataset, wildcards.slide, decision)
            if excluded:
                sys.exit(
                    f"msamil: slide {wildcards.slide} of dataset {wildcards.dataset} was excluded at inspection: "
                    f"{excluded['reason']} (fix: {excluded['fix']}); see {RESULTS}/{wildcards.dataset}/excluded.tsv"
                )
        return {
            "decision": decision,
            **_row_files(wildcards.dataset, slide_row(wildcards)),
        }

    return _inputs


# Per-slide resources from the slide's size (width x height in its decision file): a linear model per stage,
# mem_mb = base + per-megapixel * Mpx and runtime (minutes) = base + per-megapixel * Mpx, both times the attempt.
# Coefficients from benchmarks/bench_slide_resources.py (RESULTS.md): peak RSS ~150 MB flat for tissue, ~130 MB
# + ~1 MB per megapixel for cache; CPU ~0.02 s per megapixel for cache. Runtimes keep a wide margin for real
# scans. A decision not written yet reads as <TBD> in a dry run; Snakemake evaluates the resources again once the
# inspect job has written it.
SLIDE_RESOURCES = {
    "tissue": {"mem_mb": (1000, 0.1), "runtime": (5, 0.005)},
    "cache": {"mem_mb": (1000, 1.0), "runtime": (10, 0.01)},
}


@functools.lru_cache(maxsize=None)
def _decision_megapixels(path, mtime):
    with open(path) as handle:
        row = json.load(handle)["row"] or {}
    return int(row.get("width", 0)) * int(row.get("height", 0)) / 1e6


def _megapixels(decision_path):
    return _decision_megapixels(decision_path, os.path.getmtime(decision_path))


def slide_resource(stage, name):
    base, per_mpx = SLIDE_RESOURCES[stage][name]

    @per_job
    def _value(wildcards, input, attempt):
        return int((base + per_mpx * _megapixels(input.decision)) * attempt)

    return _value


def inspect_resource(name):
    """Before inspection the slide's size is unknown: its file size stands in (slides compress ~1-4 bytes/px)."""
    base, per_mb = {"mem_mb": (1000, 1.0), "runtime": (5, 0.02)}[name]

    @per_job
    def _value(wildcards, input, attempt):
        return int((base + per_mb * input.size_mb) * attempt)

    return _value


def synthetic_mem_mb(wildcards, attempt):
    """About 80 bytes per level-0 pixel while drawing (float stain layers), plus the interpreter."""
    pixels = int(SYNTHETIC.get("width", 3072)) * int(SYNTHETIC.get("height", 2048))
    return (600 + pixels * 80 // 1_000_000) * attempt


@per_job
def inspect_params(wildcards):
    """What an inspect job reads: its own slide-table row and its dataset's settings (nothing of other rows, so
    editing one row reruns that slide's inspection only)."""
    spec = dataset_cfg(wildcards.dataset)
    unlabelled = (
        predict_name(wildcards.dataset) is not None
    )  # a prediction set: labels are not checked
    return {
        "row": slide_row(wildcards),
        "classes": None if unlabelled else list(spec["classes"]),
        "default_mpp": spec.get("default_mpp"),
        "tissue": dataset_tissue(wildcards.dataset),
    }


@per_job
def tissue_params(wildcards):
    return dataset_tissue(wildcards.dataset)


def run_common_inputs(wildcards):
    """slides.tsv lists every usable slide's cache with its checksum: training jobs depend on it alone, not on
    thousands of cache files (planning 2,000 slides stays fast; benchmarks/bench_dag.py).
    """
    return {
        "slides": inspected_slides(wildcards),
        "folds": f"{RESULTS}/{wildcards.dataset}/splits/folds.tsv",
    }


def train_inputs(wildcards):
    """Slide manifest and folds; plus the fold's SFFM selection unless the method has `sffm: false`."""
    inputs = run_common_inputs(wildcards)
    if config["methods"][wildcards.method].get("sffm", True):
        inputs["selection"] = (
            f"{RESULTS}/{wildcards.dataset}/lesion/fold{wildcards.fold}/selection.h5"
        )
    return inputs


def baseline_inputs(wildcards):
    """Slide manifest and folds: each baseline run extracts its own (fold-dependent) features from the caches
    slides.tsv lists."""
    return run_common_inputs(wildcards)


def run_config(wildcards):
    """The config subset one training run reads, so an unrelated config change does not rerun it."""
    spec = config["methods"][wildcards.method]
    subset = {
        "seed": config["seed"],
        "device": config.get("device", "auto"),
        "scales": config.get("scales"),
        "model": config["model"],
        "train": config.get("train", {}),
        "methods": {wildcards.method: spec},
        "dataset_config": {
            wildcards.dataset: config["dataset_config"][wildcards.dataset]
        },
    }
    if spec["kind"] != "msamil":
        subset["baselines"] = config.get("baselines", {})
    return subset


def method_weights(wildcards):
    """The pretrained weights file a run loads (fetched by the local rule fetch_weights), if any."""
    path = cached_weights(method_settings(config, wildcards.method)["model"])
    return [str(path)] if path is not None else []


# Prediction sets (rules/predict.smk): `predict/<name>` slides through the per-slide rules, then the trained fold
# models of the set's dataset and method.


def predict_spec(wildcards):
    return PREDICT[wildcards.name]


def predict_lesion_model(wildcards):
    """The lesion model the source dataset trained for this fold (its SFFM selects the new slides' patches)."""
    return f"{RESULTS}/{predict_spec(wildcards)['dataset']}/lesion/fold{wildcards.fold}/unetpp.pt"


def predict_fold_inputs(wildcards):
    """The new slides' manifest, the fold's best.pt of the source dataset/method, and (SFFM methods) the new
    slides' selection by that fold's lesion model."""
    spec = predict_spec(wildcards)
    inputs = {
        "slides": f"{RESULTS}/predict/{wildcards.name}/slides.tsv",
        "model": f"{RESULTS}/{spec['dataset']}/runs/{spec['method']}/fold{wildcards.fold}/best.pt",
    }
    if config["methods"][spec["method"]].get("sffm", True):
        inputs["selection"] = (
            f"{RESULTS}/predict/{wildcards.name}/lesion/fold{wildcards.fold}/selection.h5"
        )
    return inputs


def predict_run_config(wildcards):
    """The config subset a predict_fold job reads: that of the training run it applies."""
    spec = predict_spec(wildcards)
    return run_config(SimpleNamespace(dataset=spec["dataset"], method=spec["method"]))


def predict_method_scales(name):
    return method_settings(config, PREDICT[name]["method"])["scales"]
