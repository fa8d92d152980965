# Input, parameter and resource functions of the stage rules. They live apart from the rules (snakemake --lint:
# no functions in rule files) and run lazily, so constants of the rule files are available when they are called.


def inspected_slides(wildcards):
    """slides.tsv as an input (waiting on the checkpoint is what makes later stages see its slides)."""
    return inspected_slides_path(wildcards.dataset)


def slide_file(wildcards):
    """The slide's own file, so a replaced slide re-runs its per-slide jobs."""
    table = slides_table(wildcards.dataset)
    return table.loc[table["slide"] == wildcards.slide, "path"].tolist()[:1]


def lesion_slide_files(wildcards):
    """Slide and annotation files of the usable slides (segmentation reads them directly)."""
    table = slides_table(wildcards.dataset)
    files = table["path"].tolist()
    if "annotation" in table:
        files += [a for a in table["annotation"] if a.strip()]
    return files


def synthetic_slide_ids():
    """syn_000 .. syn_{n-1}: the same names as msamil.slides.synthetic.slide_ids (the Snakefile cannot import it)."""
    return [f"syn_{i:03d}" for i in range(int(SYNTHETIC.get("n_slides", 0)))]


def synthetic_raw_inputs(dataset):
    """The raw table of a synthetic dataset plus every slide and annotation file it lists."""
    ids = synthetic_slide_ids()
    return (
        [raw_table(dataset)]
        + expand(SYNTHETIC_SLIDE, dataset=dataset, slide=ids)
        + expand(SYNTHETIC_ANNOTATION, dataset=dataset, slide=ids)
    )


def synthetic_mem_mb(wildcards, attempt):
    """About 80 bytes per level-0 pixel while drawing (float stain layers), plus the interpreter."""
    pixels = int(SYNTHETIC.get("width", 3072)) * int(SYNTHETIC.get("height", 2048))
    return (600 + pixels * 80 // 1_000_000) * attempt


def run_common_inputs(wildcards):
    return {
        "slides": f"{RESULTS}/{wildcards.dataset}/slides.tsv",
        "folds": f"{RESULTS}/{wildcards.dataset}/splits/folds.tsv",
        "caches": per_slide(CACHE)(wildcards),
    }


def train_inputs(wildcards):
    """Slide table, folds and caches; plus the fold's SFFM selection unless the method has `sffm: false`."""
    inputs = run_common_inputs(wildcards)
    if config["methods"][wildcards.method].get("sffm", True):
        inputs["selection"] = (
            f"{RESULTS}/{wildcards.dataset}/lesion/fold{wildcards.fold}/selection.h5"
        )
    return inputs


def baseline_inputs(wildcards):
    """Slide table, folds and caches: each baseline run extracts its own (fold-dependent) features."""
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
