# Helpers of the datasets rules (rules/datasets.smk): the per-slide plan read from the dataset_table checkpoint.
import functools

EXTERNAL_DATASETS = [
    name
    for name, spec in config["dataset_config"].items()
    if spec["source"] != "synthetic"
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


def external_raw_inputs(dataset):
    """The source table plus every slide and annotation file it names (what the inspect checkpoint needs)."""
    table_path = checkpoints.dataset_table.get(dataset=dataset).output.table
    table = pd.read_csv(table_path, sep="\t", dtype=str, keep_default_na=False)
    annotations = [a for a in table["annotation"] if a]
    return [table_path, *table["path"], *annotations]
