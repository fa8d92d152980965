# Aggregate stage: the paper's tables and figures across datasets, and per-slide QC sheets, all in the report.
# Paths and slide choices live in msamil.reporting.report.AggregatePlan (plain Python, unit-tested);
# `aggregate_targets()` lists every output of this stage for `rule all`.
from msamil.reporting.report import AggregatePlan

TABLES = f"{RESULTS}/tables"
FIGURES = f"{RESULTS}/figures"
AGG = AggregatePlan(
    config,
    RESULTS,
    METHODS,
    FOLDS,
    lambda dataset: checkpoints.slides.get(dataset=dataset).output.slides,
)
aggregate_targets = AGG.targets


rule tables:
    input:
        predictions=AGG.run_outputs("predictions.tsv"),
        efficiency=AGG.run_outputs("efficiency.json"),
        selections=AGG.lesion_outputs("selection.h5"),
    output:
        main_results_tsv=report(
            f"{TABLES}/main_results.tsv",
            caption="../workflow/report/table_main_results.rst",
            category="Tables",
            subcategory="Main results",
            labels={"table": "Main results", "format": "TSV"},
        ),
        main_results_md=f"{TABLES}/main_results.md",
        main_results_tex=f"{TABLES}/main_results.tex",
        ablation_tsv=report(
            f"{TABLES}/ablation.tsv",
            caption="../workflow/report/table_ablation.rst",
            category="Tables",
            subcategory="Ablation",
            labels={"table": "Ablation", "format": "TSV"},
        ),
        ablation_md=f"{TABLES}/ablation.md",
        ablation_tex=f"{TABLES}/ablation.tex",
        comparisons_tsv=report(
            f"{TABLES}/comparisons.tsv",
            caption="../workflow/report/table_comparisons.rst",
            category="Tables",
            subcategory="Comparisons with MsaMIL-Net",
            labels={"table": "Comparisons with MsaMIL-Net", "format": "TSV"},
        ),
        comparisons_md=f"{TABLES}/comparisons.md",
        comparisons_tex=f"{TABLES}/comparisons.tex",
        efficiency_tsv=report(
            f"{TABLES}/efficiency.tsv",
            caption="../workflow/report/table_efficiency.rst",
            category="Tables",
            subcategory="Efficiency",
            labels={"table": "Efficiency", "format": "TSV"},
        ),
        efficiency_md=f"{TABLES}/efficiency.md",
        efficiency_tex=f"{TABLES}/efficiency.tex",
        sffm_tsv=report(
            f"{TABLES}/sffm.tsv",
            caption="../workflow/report/table_sffm.rst",
            category="Tables",
            subcategory="SFFM selection",
            labels={"table": "SFFM selection", "format": "TSV"},
        ),
        sffm_md=f"{TABLES}/sffm.md",
        sffm_tex=f"{TABLES}/sffm.tex",
    log:
        log_path("tables", "all"),
    benchmark:
        bench_path("tables", "all")
    conda:
        "../envs/report.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=20,
    params:
        datasets=config["datasets"],
        methods=config["methods"],
        folds=FOLDS,
        scales=config["scales"],
        bootstrap_resamples=config.get("report", {}).get("bootstrap_resamples", 5000),
        bootstrap_seed=config.get("report", {}).get("bootstrap_seed", 0),
        pretrained=bool(config["model"].get("pretrained", False)),
    script:
        "../workflow/scripts/tables.py"


rule fig2_sffm:
    input:
        unpack(after_checkpoint(AGG.fig2_inputs, unpacked=True)),
    output:
        png=report(
            f"{FIGURES}/fig2_sffm.png",
            caption="../workflow/report/fig2_sffm.rst",
            category="Figures",
            subcategory="Fig. 2 SFFM",
            labels={"figure": "Fig. 2 SFFM"},
        ),
        pdf=f"{FIGURES}/fig2_sffm.pdf",
    log:
        log_path("fig2_sffm", "all"),
    benchmark:
        bench_path("fig2_sffm", "all")
    conda:
        "../envs/report.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=20,
    params:
        picks=lambda wildcards: AGG.fig2_picks(),
        folds=FOLDS,
    script:
        "../workflow/scripts/figure_fig2.py"


rule fig3a_unetpp_iou:
    input:
        histories=AGG.lesion_outputs("history.tsv"),
    output:
        png=report(
            f"{FIGURES}/fig3a_unetpp_iou.png",
            caption="../workflow/report/fig3a_unetpp_iou.rst",
            category="Figures",
            subcategory="Fig. 3a U-Net++ IoU",
            labels={"figure": "Fig. 3a U-Net++ IoU"},
        ),
        pdf=f"{FIGURES}/fig3a_unetpp_iou.pdf",
    log:
        log_path("fig3a_unetpp_iou", "all"),
    benchmark:
        bench_path("fig3a_unetpp_iou", "all")
    conda:
        "../envs/report.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=20,
    params:
        datasets=config["datasets"],
        folds=FOLDS,
    script:
        "../workflow/scripts/figure_fig3a.py"


rule fig3b_dino_vs_e2e:
    input:
        predictions=AGG.run_outputs("predictions.tsv", [AGG.TWO_STAGE, AGG.E2E]),
    output:
        png=report(
            f"{FIGURES}/fig3b_dino_vs_e2e.png",
            caption="../workflow/report/fig3b_dino_vs_e2e.rst",
            category="Figures",
            subcategory="Fig. 3b DINO vs end-to-end",
            labels={"figure": "Fig. 3b DINO vs end-to-end"},
        ),
        pdf=f"{FIGURES}/fig3b_dino_vs_e2e.pdf",
    log:
        log_path("fig3b_dino_vs_e2e", "all"),
    benchmark:
        bench_path("fig3b_dino_vs_e2e", "all")
    conda:
        "../envs/report.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=20,
    params:
        datasets=config["datasets"],
        folds=FOLDS,
        two_stage=AGG.TWO_STAGE,
        end_to_end=AGG.E2E,
    script:
        "../workflow/scripts/figure_fig3b.py"


rule roc_curves:
    input:
        predictions=lambda wildcards: AGG.run_outputs(
            "predictions.tsv", datasets=[wildcards.dataset]
        ),
    output:
        png=report(
            f"{FIGURES}/roc_{{dataset}}.png",
            caption="../workflow/report/roc.rst",
            category="Figures",
            subcategory="ROC",
            labels={"figure": "ROC", "dataset": "{dataset}"},
        ),
        pdf=f"{FIGURES}/roc_{{dataset}}.pdf",
    log:
        log_path("roc_curves", "{dataset}"),
    benchmark:
        bench_path("roc_curves", "{dataset}")
    conda:
        "../envs/report.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=20,
    params:
        methods=config["methods"],
        folds=FOLDS,
        scales=config["scales"],
    script:
        "../workflow/scripts/figure_roc.py"


rule attention_heatmaps:
    input:
        unpack(after_checkpoint(AGG.attention_inputs, unpacked=True)),
    output:
        png=report(
            f"{FIGURES}/attention_{{dataset}}.png",
            caption="../workflow/report/attention.rst",
            category="Figures",
            subcategory="Attention heatmaps",
            labels={"figure": "Attention heatmaps", "dataset": "{dataset}"},
        ),
        pdf=f"{FIGURES}/attention_{{dataset}}.pdf",
    log:
        log_path("attention_heatmaps", "{dataset}"),
    benchmark:
        bench_path("attention_heatmaps", "{dataset}")
    conda:
        "../envs/report.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=20,
    params:
        slides=lambda wildcards: AGG.heatmap_slides(wildcards.dataset),
        folds=FOLDS,
        method=AGG.E2E,
        scales=AGG.attention_scales(),
    script:
        "../workflow/scripts/figure_attention.py"


rule efficiency_plot:
    input:
        predictions=AGG.run_outputs("predictions.tsv"),
        efficiency=AGG.run_outputs("efficiency.json"),
    output:
        png=report(
            f"{FIGURES}/efficiency.png",
            caption="../workflow/report/efficiency.rst",
            category="Figures",
            subcategory="Efficiency",
            labels={"figure": "Efficiency"},
        ),
        pdf=f"{FIGURES}/efficiency.pdf",
    log:
        log_path("efficiency_plot", "all"),
    benchmark:
        bench_path("efficiency_plot", "all")
    conda:
        "../envs/report.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=20,
    params:
        datasets=config["datasets"],
        methods=config["methods"],
        folds=FOLDS,
        scales=config["scales"],
    script:
        "../workflow/scripts/figure_efficiency.py"


rule qc_sheets:
    input:
        slides=f"{RESULTS}/{{dataset}}/slides.tsv",
    output:
        sheets=report(
            directory(f"{RESULTS}/{{dataset}}/qc_sheets"),
            patterns=["{slide}.png"],
            caption="../workflow/report/qc.rst",
            category="QC",
            subcategory="{dataset}",
            labels={"dataset": "{dataset}", "slide": "{slide}"},
        ),
    log:
        log_path("qc_sheets", "{dataset}"),
    benchmark:
        bench_path("qc_sheets", "{dataset}")
    conda:
        "../envs/report.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=20,
    script:
        "../workflow/scripts/figure_qc.py"
