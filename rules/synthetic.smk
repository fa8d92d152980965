# The embedded synthetic dataset (DESIGN.md section 9): a table of slides/patients/labels, then one job per slide
# that draws an Aperio SVS and its lesion GeoJSON (msamil.slides.synthetic). Slide ids are known from the config,
# so no checkpoint is needed: syn_000 .. syn_{n_slides-1} (the same names as msamil.slides.synthetic.slide_ids).

SYNTHETIC_DATASETS = [
    name
    for name, spec in config["dataset_config"].items()
    if spec["source"] == "synthetic"
]
SYNTHETIC_RE = names_regex(SYNTHETIC_DATASETS)
SYNTHETIC = config.get("synthetic", {})
SYNTHETIC_SLIDE = f"{RESULTS}/{{dataset}}/raw/slides/{{slide}}.svs"
SYNTHETIC_ANNOTATION = f"{RESULTS}/{{dataset}}/raw/annotations/{{slide}}.geojson"


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
