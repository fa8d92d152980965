# The embedded synthetic dataset (DESIGN.md section 9): a table of slides/patients/labels, then one job per slide
# that draws an Aperio SVS and its lesion GeoJSON (msamil.synthetic). Slide ids are known from the config, so no
# checkpoint is needed: syn_000 .. syn_{n_slides-1} (the same names as msamil.synthetic.slide_ids).

SYNTHETIC_DATASETS = [
    name
    for name, spec in config["dataset_config"].items()
    if spec["source"] == "synthetic"
]
SYNTHETIC_RE = "|".join(SYNTHETIC_DATASETS) or "(?!x)x"
SYNTHETIC = config.get("synthetic", {})
SYNTHETIC_SLIDE = f"{RESULTS}/{{dataset}}/raw/slides/{{slide}}.svs"
SYNTHETIC_ANNOTATION = f"{RESULTS}/{{dataset}}/raw/annotations/{{slide}}.geojson"


def synthetic_slide_ids():
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


rule synthetic_table:
    output:
        table=f"{RESULTS}/{{dataset}}/raw/table.tsv",
    log:
        log_path("synthetic_table", "{dataset}"),
    benchmark:
        bench_path("synthetic_table", "{dataset}")
    wildcard_constraints:
        dataset=SYNTHETIC_RE,
    conda:
        "../envs/slide.yaml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=5,
    params:
        synthetic=SYNTHETIC,
        seed=config["seed"],
        slide_pattern=lambda wc: SYNTHETIC_SLIDE.replace("{dataset}", wc.dataset),
        annotation_pattern=lambda wc: SYNTHETIC_ANNOTATION.replace(
            "{dataset}", wc.dataset
        ),
    script:
        "../workflow/scripts/synthetic_table.py"


rule generate_synthetic:
    input:
        table=f"{RESULTS}/{{dataset}}/raw/table.tsv",
    output:
        svs=SYNTHETIC_SLIDE,
        geojson=SYNTHETIC_ANNOTATION,
    log:
        log_path("generate_synthetic", "{dataset}", "{slide}"),
    benchmark:
        bench_path("generate_synthetic", "{dataset}", "{slide}")
    wildcard_constraints:
        dataset=SYNTHETIC_RE,
        slide="syn_[0-9]+",
    conda:
        "../envs/slide.yaml"
    threads: 1
    resources:
        mem_mb=synthetic_mem_mb,
        runtime=lambda wc, attempt: 10 * attempt,
    params:
        synthetic=SYNTHETIC,
        seed=config["seed"],
        mpp=config["mpp_20x"],
    script:
        "../workflow/scripts/generate_synthetic.py"
