# Inspection, one job per row of the dataset's slide table: the slide is opened, checked and either kept (its
# slides.tsv row) or excluded with a reason, in a per-slide decision file. A job's params are its own row, so
# editing one row (its mpp, label or file) reruns that slide's jobs and what depends on them, and nothing else.
# Two gathers make the per-dataset tables (msamil.slides.outcomes):
#   checkpoint inspect: decisions -> inspect/slides.tsv, inspect/excluded.tsv (which slides get tissue and cache)
#   checkpoint slides:  those + every cache -> slides.tsv (usable slides, each cache with its checksum: the one
#                       manifest later stages depend on) and excluded.tsv (every slide left out, at any stage).


rule inspect_slide:
    input:
        unpack(inspect_slide_inputs),
    output:
        decision=DECISION,
        qc=f"{RESULTS}/{{dataset}}/qc/{{slide}}.png",
    log:
        log_path("inspect_slide", "{dataset}", "{slide}"),
    benchmark:
        bench_path("inspect_slide", "{dataset}", "{slide}")
    wildcard_constraints:
        dataset=SLIDE_DATASET,
    conda:
        "../envs/slide.yaml"
    threads: 1
    resources:
        mem_mb=inspect_resource("mem_mb"),
        runtime=inspect_resource("runtime"),
    params:
        spec=inspect_params,
    script:
        "../workflow/scripts/inspect_slide.py"


checkpoint inspect:
    input:
        after_checkpoint(all_decisions),
    output:
        slides=f"{RESULTS}/{{dataset}}/inspect/slides.tsv",
        excluded=f"{RESULTS}/{{dataset}}/inspect/excluded.tsv",
    log:
        log_path("inspect", "{dataset}"),
    benchmark:
        bench_path("inspect", "{dataset}")
    wildcard_constraints:
        dataset=SLIDE_DATASET,
    conda:
        "../envs/slide.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=30,
    params:
        unnamed=unnamed_rows,
    script:
        "../workflow/scripts/inspect_gather.py"


checkpoint slides:
    input:
        slides=f"{RESULTS}/{{dataset}}/inspect/slides.tsv",
        excluded=f"{RESULTS}/{{dataset}}/inspect/excluded.tsv",
        caches=after_checkpoint(passed_caches),
    output:
        slides=f"{RESULTS}/{{dataset}}/slides.tsv",
        excluded=f"{RESULTS}/{{dataset}}/excluded.tsv",
    log:
        log_path("slides", "{dataset}"),
    benchmark:
        bench_path("slides", "{dataset}")
    wildcard_constraints:
        dataset=SLIDE_DATASET,
    conda:
        "../envs/slide.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=30,
    script:
        "../workflow/scripts/slides_gather.py"
