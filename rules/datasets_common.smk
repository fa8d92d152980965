# Helpers of the datasets rules (rules/datasets.smk): the per-slide plan read from the dataset_table checkpoint.
import functools

# Registry datasets (msamil.datasets.registry) are fetched and scanned; a user's own cohort (`source: local` with a
# `slide_table`, any other name) needs neither: its table is read directly (rules/common.smk, raw_table).
EXTERNAL_DATASETS = [
    name
    for name, spec in config["dataset_config"].items()
    if spec["source"] != "synthetic" and name in REGISTRY
]
EXTERNAL_RE = names_regex(EXTERNAL_DATASETS)


def dataset_root(dataset):
    """Where a dataset's original files live: a symlink to the user's folder, or the download folder."""
    return f"{RESULTS}/{dataset}/raw/source"


@functools.lru_cache(maxsize=32)
def _read_plan(path, mtime):
    frame = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)
    return frame.set_index("slide", drop=False)


def source_plan(dataset):
    """raw/sources.tsv of a dataset (waits for the dataset_table checkpoint)."""
    path = checkpoints.dataset_table.get(dataset=dataset).output.sources
    return _read_plan(path, os.path.getmtime(path))


def plan_value(column):
    """Input/params function: one column of the job's slide row in raw/sources.tsv."""

    def _value(wildcards):
        return source_plan(wildcards.dataset).loc[wildcards.slide, column]

    return _value


def plan_files(column):
    """Input function: the file named in one column of the job's slide row, or nothing when it is empty."""

    def _files(wildcards):
        value = plan_value(column)(wildcards)
        return [value] if value else []

    return _files
