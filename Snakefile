# msamil: MsaMIL-Net and its baselines, from raw slides to the paper's tables and figures.
# Run: snakemake --cores 8 --use-conda   (see README.md)
import os
import sys

from snakemake.utils import min_version

# The msamil package sits next to this Snakefile: importable even where Snakemake runs outside .venv.
sys.path.insert(0, workflow.basedir)
# Rule scripts import msamil from this checkout too, whichever conda env (or cluster node) runs them.
os.environ.update(
    PYTHONPATH=os.pathsep.join(
        p for p in (workflow.basedir, os.environ.get("PYTHONPATH", "")) if p
    )
)

min_version("9.0")


configfile: os.path.join(workflow.basedir, "config.yaml")


report: "workflow/report/workflow.rst"


include: "rules/common.smk"
include: "rules/inputs.smk"
include: "rules/synthetic.smk"
include: "rules/inspect.smk"
include: "rules/tissue.smk"
include: "rules/cache.smk"
include: "rules/splits.smk"
include: "rules/lesion.smk"
include: "rules/weights.smk"
include: "rules/train.smk"
include: "rules/baselines.smk"
include: "rules/aggregate.smk"
include: "rules/datasets.smk"
include: "rules/predict.smk"


rule all:
    default_target: True
    input:
        expand("results/{dataset}/slides.tsv", dataset=config["datasets"]),
        final_targets,


# Exclusions are easy to miss in a log: say at the end how many slides each dataset used and where the rest are.
onsuccess:
    summarise_datasets()


onerror:
    summarise_datasets()
