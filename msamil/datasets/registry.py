"""Dataset definitions: each public dataset's file layout, label table, patient grouping, MPP and annotations.

A definition turns a directory holding the dataset as its publisher ships it into `SourceRecord`s, one per slide.
`build_tables` then writes the slide table every dataset shares (`raw/table.tsv`, msamil.slides.table: slide,
patient, label, path, annotation, mpp, mpp_source, exclude) plus `raw/sources.tsv`, which tells the per-slide
conversion jobs which original file each slide comes from. Slide ids are only known once the files are there, which
is why the workflow builds these tables in a checkpoint. No file a scanner finds is dropped: one it cannot label
(or that an option leaves out) is listed with an `exclude` reason, so it reaches excluded.tsv like any other
unusable slide.
"""

from __future__ import annotations

import csv
import glob
import logging
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from msamil.errors import ConfigError
from msamil.slides.slide_table import read_slide_table

log = logging.getLogger(__name__)

#: Plain images that must become pyramidal TIFF before OpenSlide can read them.
CONVERTIBLE = frozenset({".jpg", ".jpeg", ".png"})
EMPTY = "empty"  # annotation kind of a slide known to hold no lesion
TABLE_COLUMNS = ["slide", "patient", "label", "path", "annotation", "mpp", "mpp_source", "exclude"]
#: dataset options that are MPPs: never built in, each null (unknown) or a positive number the user gave
MPP_OPTIONS = frozenset({"wsi_mpp", "tma_mpp"})
SOURCE_COLUMNS = ["slide", "source", "annotation_source", "annotation_kind", "mpp", "is_tma", "convert"]


@dataclass(frozen=True)
class SourceRecord:
    """One slide as found in the publisher's layout (paths relative to the workflow's working directory)."""

    slide: str
    patient: str
    label: str
    source: str
    annotation_source: str = ""
    annotation_kind: str = ""
    mpp: float | None = None
    is_tma: bool = False
    mpp_source: str = ""  # the config key or table the mpp came from (recorded in slides.tsv)
    exclude: str = ""  # why the slide is listed but not used (no label, left out by an option); empty = use it


Scanner = Callable[[Path, dict[str, Any]], list[SourceRecord]]


@dataclass(frozen=True)
class DatasetDef:
    """What the workflow needs to know about one public dataset."""

    name: str
    title: str
    classes: tuple[str, ...]
    annotation_kind: str
    layout: str
    scan: Scanner
    options: dict[str, Any] = field(default_factory=dict)
    #: labels whose slides are known to hold no lesion: they get an empty GeoJSON (a true negative for the lesion
    #: model) instead of no annotation (unknown, skipped by it)
    lesion_free: tuple[str, ...] = ()


def safe_id(name: str) -> str:
    """A slide id usable as a file name and a Snakemake wildcard (DigestPath names carry spaces and colons).

    Never `.`, `..`, hidden (a leading dot) or empty: leading dots and underscores are dropped.
    """
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).lstrip("._").rstrip("_") or "slide"


def _glob(root: Path, pattern: str) -> list[Path]:
    """Sorted recursive glob that follows symlinks (local sources are linked, not copied)."""
    return sorted(Path(p) for p in glob.glob(str(root / pattern), recursive=True))


def _require(found: list[Path], what: str, root: Path, pattern: str) -> list[Path]:
    if not found:
        raise ConfigError(
            f"no {what} under {root} matching {pattern!r}; check dataset_config.<dataset>.path (or the download) "
            f"and the layout in docs/paper_preset.md, or set the glob in dataset_config.<dataset>.options"
        )
    return found


# --------------------------------------------------------------------------------------------- DigestPath2019
def _scan_digestpath(root: Path, opts: dict[str, Any]) -> list[SourceRecord]:
    """Task 2 (colonoscopy tissue): malignant images with `<name>_mask.jpg` next to them, benign without."""
    pattern = re.compile(opts["patient_regex"])
    records = []
    for label, key in (("malignant", "positive_glob"), ("benign", "negative_glob")):
        images = [p for p in _glob(root, opts[key]) if not p.stem.endswith("_mask")]
        _require(images, f"{label} images", root, opts[key])
        for img in images:
            mask = next((m for m in (img.with_name(f"{img.stem}_mask{ext}") for ext in (".jpg", ".png"))
                         if m.exists()), None)
            match = pattern.match(img.stem)
            patient = match.group(1) if match else img.stem
            records.append(SourceRecord(
                slide=safe_id(img.stem), patient=safe_id(patient), label=label, source=str(img),
                annotation_source=str(mask) if mask else "", annotation_kind="digestpath_mask" if mask else "",
            ))
    return records


# --------------------------------------------------------------------------------------------------------- BCNB
def _read_any_table(path: Path) -> pd.DataFrame:
    if path.suffix.lower() in {".xlsx", ".xls"}:
        try:
            return pd.read_excel(path, dtype=str)
        except ImportError as exc:
            raise ConfigError(
                f"reading {path} needs openpyxl ({exc}); install it (it is in envs/slide.yaml) or save the sheet "
                f"as CSV and point dataset_config.bcnb.options.clinical_table at it"
            ) from exc
    return pd.read_csv(path, dtype=str, sep=None, engine="python")


def _aln_label(status: str, grouping: str) -> str:
    status = status.strip()
    if grouping == "binary":
        return "N0" if status.upper().startswith("N0") else "N+"
    return status


def _scan_bcnb(root: Path, opts: dict[str, Any]) -> list[SourceRecord]:
    """One core-needle biopsy WSI per patient (`WSIs/<id>.jpg` + `<id>.json`), ALN status from the clinical sheet."""
    tables = [p for pat in opts["clinical_table"] for p in _glob(root, pat)]
    _require(tables, "clinical table", root, " or ".join(opts["clinical_table"]))
    clinical = _read_any_table(tables[0])
    id_col, label_col = opts["patient_column"], opts["label_column"]
    missing = {id_col, label_col} - set(clinical.columns)
    if missing:
        raise ConfigError(f"{tables[0]} lacks column(s) {sorted(missing)} (has {list(clinical.columns)}); "
                          f"set dataset_config.bcnb.options.patient_column / label_column")
    status = {str(r[id_col]).strip(): str(r[label_col]) for _, r in clinical.iterrows() if pd.notna(r[label_col])}
    records = []
    for img in _require(_glob(root, opts["image_glob"]), "WSIs", root, opts["image_glob"]):
        ann = img.with_suffix(".json")
        known = img.stem in status
        records.append(SourceRecord(
            slide=safe_id(img.stem), patient=safe_id(img.stem),
            label=_aln_label(status[img.stem], opts["aln_grouping"]) if known else "",
            source=str(img), annotation_source=str(ann) if ann.exists() else "",
            annotation_kind="bcnb_json" if ann.exists() else "",
            exclude="" if known else f"no ALN status for {img.stem} in {tables[0].name}",
        ))
    return records


# ---------------------------------------------------------------------------------------------------- UBC-OCEAN
def _truthy(value: Any) -> bool:
    return str(value).strip().lower() in {"true", "1", "yes"}


def _scan_ubc(root: Path, opts: dict[str, Any]) -> list[SourceRecord]:
    """Kaggle UBC-OCEAN: `train.csv` (image_id, label, ..., is_tma), `train_images/<id>.png`, RGB masks for some."""
    tables = _require(_glob(root, opts["label_table"]), "label table", root, opts["label_table"])
    labels = pd.read_csv(tables[0], dtype=str)
    masks = {p.stem: p for p in _glob(root, opts["mask_glob"])}
    images = {p.stem: p for p in _glob(root, opts["image_glob"])}
    records = []
    for _, row in labels.iterrows():
        image_id = str(row["image_id"]).strip()
        is_tma = _truthy(row.get("is_tma", False))
        exclude = ""
        if image_id not in images:
            exclude = f"listed in {tables[0].name} but its image is missing (image_glob {opts['image_glob']!r})"
        elif is_tma and not opts["include_tma"]:
            exclude = "a TMA, left out by dataset_config.ubc_ocean.options.include_tma: false"
        mask = masks.get(image_id)
        records.append(SourceRecord(
            slide=safe_id(image_id), patient=safe_id(image_id), label=str(row["label"]).strip(),
            source=str(images[image_id]) if image_id in images else "", annotation_source=str(mask) if mask else "",
            annotation_kind="ubc_mask" if mask else "",
            mpp=opts["tma_mpp"] if is_tma else opts["wsi_mpp"], is_tma=is_tma, exclude=exclude,
            mpp_source=f"dataset_config.ubc_ocean.options.{'tma_mpp' if is_tma else 'wsi_mpp'}",
        ))
    return records


# --------------------------------------------------------------------------------------------------- Camelyon16
def _camelyon_reference(path: Path) -> dict[str, str]:
    """`reference.csv` (no header): `test_001,Tumor,Macro,...` or `test_002,Normal`."""
    out = {}
    with open(path, newline="") as handle:
        for row in csv.reader(handle):
            if row and row[0].strip() and not row[0].lower().startswith("image"):
                out[row[0].strip().lower().removesuffix(".tif")] = row[1].strip().lower()
    return out


def _scan_camelyon16(root: Path, opts: dict[str, Any]) -> list[SourceRecord]:
    """`images/{normal,tumor,test}_NNN.tif` (pyramidal, MPP in the file), ASAP XML tumour polygons.

    The label comes from the name (normal_*, tumor_*) or, for test_*, from reference.csv. Any other file is
    listed without a label, and a test slide without a reference row likewise: give them a label in
    dataset_config.camelyon16.slide_table, or they are excluded with that reason."""
    xmls = {p.stem.lower(): p for p in _glob(root, opts["annotation_glob"])}
    refs = _glob(root, opts["reference"])
    reference = _camelyon_reference(refs[0]) if refs else {}
    records = []
    for img in _require(_glob(root, opts["image_glob"]), "slides", root, opts["image_glob"]):
        stem = img.stem.lower()
        label, exclude = "", ""
        if re.match(r"^normal_\d+$", stem):
            label = "normal"
        elif re.match(r"^tumor_\d+$", stem):
            label = "tumor"
        elif re.match(r"^test_\d+$", stem):
            label = reference.get(stem, "")
            if not opts["include_test"]:
                exclude = "a test slide, left out by dataset_config.camelyon16.options.include_test: false"
            elif not label:
                exclude = "a test slide with no row in reference.csv, so its label is unknown"
        else:
            exclude = "its name is not normal_NNN, tumor_NNN or test_NNN, so its label is unknown"
        xml = xmls.get(stem)
        records.append(SourceRecord(
            slide=safe_id(img.stem), patient=safe_id(img.stem), label=label, source=str(img),
            annotation_source=str(xml) if xml else "", annotation_kind="asap_xml" if xml else "", exclude=exclude,
        ))
    return records


DATASETS: dict[str, DatasetDef] = {
    d.name: d
    for d in (
        DatasetDef(
            name="digestpath2019", title="DigestPath2019 task 2 (colonoscopy tissue)",
            classes=("benign", "malignant"), annotation_kind="digestpath_mask",
            layout="tissue-train-pos-v1/<name>.jpg + <name>_mask.jpg (malignant), tissue-train-neg/<name>.jpg",
            scan=_scan_digestpath,
            options={"positive_glob": "**/*pos*/*.jpg", "negative_glob": "**/*neg*/*.jpg",
                     "patient_regex": r"^(.+?)_\d{4}-\d{2}-\d{2}"},
            lesion_free=("benign",),
        ),
        DatasetDef(
            name="bcnb", title="BCNB (early breast cancer core-needle biopsies, ALN status)",
            classes=("N0", "N+"), annotation_kind="bcnb_json",
            layout="WSIs/<id>.jpg + WSIs/<id>.json, patient-clinical-data.xlsx (or .csv)",
            scan=_scan_bcnb,
            options={"image_glob": "**/WSIs/*.jpg",
                     "clinical_table": ["**/patient-clinical-data.xlsx", "**/patient-clinical-data.csv"],
                     "patient_column": "Patient ID", "label_column": "ALN status", "aln_grouping": "binary"},
        ),
        DatasetDef(
            name="ubc_ocean", title="UBC-OCEAN (ovarian cancer histotypes, Kaggle 2023)",
            classes=("CC", "EC", "HGSC", "LGSC", "MC"), annotation_kind="ubc_mask",
            layout="train.csv, train_images/<image_id>.png, *mask*/<image_id>.png (RGB, red = tumour)",
            scan=_scan_ubc,
            options={"label_table": "**/train.csv", "image_glob": "**/train_images/*.png",
                     "mask_glob": "**/*mask*/*.png", "wsi_mpp": None, "tma_mpp": None, "include_tma": True},
        ),
        DatasetDef(
            name="camelyon16", title="Camelyon16 (lymph node metastases)",
            classes=("normal", "tumor"), annotation_kind="asap_xml",
            layout="images/{normal,tumor,test}_NNN.tif, annotations/<slide>.xml, evaluation/reference.csv",
            scan=_scan_camelyon16,
            options={"image_glob": "**/*.tif", "annotation_glob": "**/*.xml",
                     "reference": "**/reference.csv", "include_test": True},
            lesion_free=("normal",),
        ),
    )
}


def get_dataset(name: str) -> DatasetDef:
    if name not in DATASETS:
        raise ConfigError(f"unknown dataset {name!r}; known: {sorted(DATASETS)} (or source: synthetic)")
    return DATASETS[name]


def resolve_options(defn: DatasetDef, options: dict[str, Any] | None) -> dict[str, Any]:
    """Defaults plus the user's `options`; an unknown key is a typo, so it is an error."""
    options = dict(options or {})
    unknown = set(options) - set(defn.options)
    if unknown:
        raise ConfigError(f"dataset_config.{defn.name}.options: unknown key(s) {sorted(unknown)}; "
                          f"known: {sorted(defn.options)}")
    for key in MPP_OPTIONS & set(options):
        value = options[key]
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | float) or value <= 0):
            raise ConfigError(f"dataset_config.{defn.name}.options.{key}: {value!r} is not an MPP; give µm per "
                              f"pixel (e.g. 0.5) or null when unknown")
    return {**defn.options, **options}


def _read_overrides(path: str, dataset: str) -> pd.DataFrame:
    from msamil.slides.table import resolve

    if not Path(path).exists():
        raise ConfigError(f"dataset_config.{dataset}.slide_table: {path} does not exist")
    table = read_slide_table(path)  # a duplicated id is an error listing them, never "the last row wins"
    table.columns = [str(c).strip().lower() for c in table.columns]
    folder = str(Path(path).parent)
    for col in ("path", "annotation"):
        if col in table.columns:
            table[col] = [resolve(v, folder) for v in table[col]]
    return table


def _added_record(row: pd.Series, dataset: str, root: Path | None) -> SourceRecord:
    """A slide_table row that names no slide the scanner found: a slide of its own if it gives a file."""
    slide = str(row["slide"]).strip()
    source = str(row.get("path", "")).strip()
    annotation = str(row.get("annotation", "")).strip()
    return SourceRecord(
        slide=slide, patient=str(row.get("patient", "")).strip() or slide, label=str(row.get("label", "")).strip(),
        source=source, annotation_source=annotation, annotation_kind="geojson" if annotation else "",
        mpp=float(row["mpp"]) if str(row.get("mpp", "")).strip() else None,
        mpp_source=f"dataset_config.{dataset}.slide_table" if str(row.get("mpp", "")).strip() else "",
        exclude="" if source else f"listed in dataset_config.{dataset}.slide_table, but the {dataset} scanner "
                                  f"found no such slide under {root or 'its folder'} and the row gives no path",
    )


def _apply_slide_table(records: list[SourceRecord], path: str | None, dataset: str,
                       root: Path | None = None) -> list[SourceRecord]:
    """The user's slide_table on top of the scan: per-slide overrides (patient, label, mpp), and added slides.

    A row whose slide the scanner did not find is added (with its `path`), or listed as excluded with the reason,
    so no row of the user's table is silently ignored. A label given here also rescues a scanned file that had
    none (a Camelyon16 file with an unusual name)."""
    if not path:
        return records
    overrides = {str(r["slide"]).strip(): r for _, r in _read_overrides(path, dataset).iterrows()}
    out = []
    for rec in records:
        row = overrides.pop(rec.slide, None)
        if row is not None:
            changes: dict[str, Any] = {k: row[k] for k in ("patient", "label") if k in row and row[k]}
            if "mpp" in row and row["mpp"]:
                changes["mpp"] = float(row["mpp"])
                changes["mpp_source"] = f"dataset_config.{dataset}.slide_table"
            if changes.get("label") and not rec.label and "left out by" not in rec.exclude:
                changes["exclude"] = ""
            rec = SourceRecord(**{**asdict(rec), **changes})
        out.append(rec)
    return out + [_added_record(row, dataset, root) for row in overrides.values()]


def scan(dataset: str, root: str | Path, ds_cfg: dict[str, Any]) -> list[SourceRecord]:
    """All slides of a dataset found under `root`, after options, slide-table overrides and class checks."""
    defn = get_dataset(dataset)
    opts = resolve_options(defn, ds_cfg.get("options"))
    records = _apply_slide_table(defn.scan(Path(root), opts), ds_cfg.get("slide_table"), dataset, Path(root))
    records = [SourceRecord(**{**asdict(r), "annotation_kind": EMPTY})
               if r.label in defn.lesion_free and not r.annotation_source else r for r in records]
    for rec in records:
        if rec.exclude:
            log.warning("%s: %s is listed but excluded: %s", dataset, rec.slide, rec.exclude)
    classes = list(ds_cfg.get("classes") or defn.classes)
    found = sorted({r.label for r in records if r.label and not r.exclude})
    stray = [lab for lab in found if lab not in classes]
    if stray:
        raise ConfigError(f"{dataset}: labels {stray} are not in dataset_config.{dataset}.classes {classes}; "
                          f"add them to classes or fix the label table")
    ids = [r.slide for r in records]
    dupes = sorted({s for s in ids if ids.count(s) > 1})
    if dupes:
        raise ConfigError(f"{dataset}: slide ids {dupes[:5]} occur twice; remove the duplicate files")
    if not [r for r in records if not r.exclude]:
        raise ConfigError(f"{dataset}: no usable slide under {root}")
    return records


def slide_path(results: str, dataset: str, rec: SourceRecord) -> str:
    """Where the workflow reads a slide: the converted TIFF for plain images, the original file otherwise."""
    if rec.source and Path(rec.source).suffix.lower() in CONVERTIBLE:
        return f"{results}/{dataset}/raw/slides/{rec.slide}.tiff"
    return rec.source


def annotation_path(results: str, dataset: str, rec: SourceRecord) -> str:
    """The GeoJSON the workflow writes for a slide; empty when nothing is known about its lesions."""
    if rec.annotation_kind == "geojson":  # the user's own QuPath GeoJSON (slide_table): used as it is
        return rec.annotation_source
    known = rec.annotation_source or rec.annotation_kind == EMPTY
    return f"{results}/{dataset}/raw/lesions/{rec.slide}.geojson" if known else ""


def build_tables(dataset: str, root: str | Path, ds_cfg: dict[str, Any],
                 results: str = "results") -> tuple[pd.DataFrame, pd.DataFrame]:
    """(source table for inspect, per-slide conversion plan).

    MPP: a slide-table value, else the dataset's own option (UBC-OCEAN `wsi_mpp`/`tma_mpp`), else
    `dataset_config.<ds>.default_mpp`; nothing is built in, so a slide none of these covers has no MPP unless its
    file carries one, and inspection excludes it. `mpp_source` names where the value came from.
    """
    default_mpp = ds_cfg.get("default_mpp")
    rows, plan = [], []
    for rec in scan(dataset, root, ds_cfg):
        mpp, source = rec.mpp, rec.mpp_source
        if mpp is None and default_mpp is not None:
            mpp, source = default_mpp, f"dataset_config.{dataset}.default_mpp"
        convert = bool(rec.source) and Path(rec.source).suffix.lower() in CONVERTIBLE
        # Converted TIFFs carry the MPP in their resolution tags; the column repeats it with its source. For a
        # native WSI only a per-slide value belongs in the column: the dataset default reaches inspection itself.
        in_table = mpp is not None and (convert or rec.mpp is not None)
        rows.append({"slide": rec.slide, "patient": rec.patient, "label": rec.label,
                     "path": slide_path(results, dataset, rec), "annotation": annotation_path(results, dataset, rec),
                     "mpp": mpp if in_table else "", "mpp_source": source if in_table else "",
                     "exclude": rec.exclude})
        plan.append({"slide": rec.slide, "source": rec.source, "annotation_source": rec.annotation_source,
                     "annotation_kind": rec.annotation_kind, "mpp": "" if mpp is None else mpp,
                     "is_tma": rec.is_tma, "convert": convert})
    return pd.DataFrame(rows, columns=TABLE_COLUMNS), pd.DataFrame(plan, columns=SOURCE_COLUMNS)


def write_dataset_tables(dataset: str, manifest: str, ds_cfg: dict[str, Any], table_out: str, sources_out: str,
                         results: str | None = None) -> None:
    """Rule entry point: read the source manifest (its `root`), write raw/table.tsv and raw/sources.tsv.

    `results` defaults to the results folder that `table_out` (`<results>/<dataset>/raw/table.tsv`) sits in.
    """
    import json

    from msamil.slides.table import write_slide_table
    from msamil.util.atomic import write_tsv

    root = json.loads(Path(manifest).read_text())["root"]
    results = results if results is not None else Path(table_out).parents[2].as_posix()
    table, sources = build_tables(dataset, root, ds_cfg, results)
    log.info("%s: %d slides, labels %s", dataset, len(table), table["label"].value_counts().to_dict())
    write_tsv(sources_out, sources)
    write_slide_table(table_out, table)
