# msamil: MsaMIL-Net and its baselines, from raw slides to the paper's tables and figures.
# Run: snakemake --cores 8 --use-conda   (see README.md)
import os
import sys

from snakemake.utils import min_version

# The msamil package sits next to this Snakefile: importable even where Snakemake runs outside .venv.
sys.path.insert(0, workflow.basedir)
from msamil.config import dump_config, replaced_sections  # noqa: E402

# Rule scripts import msamil from this checkout too, whichever conda env (or cluster node) runs them.
os.environ.update(
    PYTHONPATH=os.pathsep.join(
        p for p in (workflow.basedir, os.environ.get("PYTHONPATH", "")) if p
    )
)

min_version("9.0")

# Config semantics (README "Configuration"): config.yaml, the CPU demo, is read only when no --configfile is given.
# A config file given on the command line is the whole config (presets/paper.yaml is complete); later config
# files and --config override it key by key, except `methods`, which the last source naming it sets exactly.
if not workflow.overwrite_configfiles:

    configfile: os.path.join(workflow.basedir, "config.yaml")


config.update(
    replaced_sections(workflow.overwrite_configfiles, workflow.config_settings.config)
)


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


# MSAMIL_DUMP_CONFIG=resolved.json snakemake -n ...: the config every rule sees (after config files, --config and
# the schema's defaults), to check what a preset or user config resolves to.
dump_config(config, os.environ.get("MSAMIL_DUMP_CONFIG"))


# Exclusions are easy to miss in a log: say at the end how many slides each dataset used and where the rest are.
onsuccess:
    summarise_datasets()


onerror:
    summarise_datasets()
