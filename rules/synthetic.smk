# The embedded synthetic dataset (DESIGN.md section 9): a slide table of slides/patients/labels (a checkpoint:
# the per-slide inspect jobs read their rows from it, like any cohort's table), then one job per slide that draws
# an Aperio SVS and its lesion GeoJSON (msamil.slides.synthetic). Slide ids syn_000 .. syn_{n_slides-1}.

SYNTHETIC_DATASETS = [
    name
    for name, spec in config["dataset_config"].items()
    if spec["source"] == "synthetic"
]
SYNTHETIC_RE = names_regex(SYNTHETIC_DATASETS)
SYNTHETIC = config.get("synthetic", {})
SYNTHETIC_SLIDE = f"{RESULTS}/{{dataset}}/raw/slides/{{slide}}.svs"
SYNTHETIC_ANNOTATION = f"{RESULTS}/{{dataset}}/raw/annotations/{{slide}}.geojson"


checkpoint synthetic_table:
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
        # relative to the table's folder, as in any slide table (msamil.slides.table)
        slide_pattern=lambda wc: "slides/{slide}.svs",
        annotation_pattern=lambda wc: "annotations/{slide}.geojson",
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
