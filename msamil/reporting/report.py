"""The aggregate stage's view of the results tree: where run outputs live, how methods are named, which slides
the figures show.

Tables and figures read the tree through these helpers only, so a missing method or dataset is skipped in one
place (with a logged warning) instead of crashing every table and figure differently.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from msamil.config import SCALES

log = logging.getLogger("msamil.reporting.report")

# Display names of the method kinds; ablations get a label from their switches (see `method_label`). The
# baselines' labels say what their features are (DESIGN.md section 7): every frozen backbone's BatchNorm
# statistics come from the fold's training slides; {init} is the backbone's initialisation (see `method_label`).
KIND_LABELS = {
    "msamil": "MsaMIL-Net",
    "abmil": "ABMIL on frozen {init} features (BN calibrated)",
    "dino_abmil": "DINO + ABMIL (DINO features, BN calibrated)",
    "icmil_abmil": "ICMIL + ABMIL (ICMIL-tuned features, BN calibrated)",
}
INIT_LABELS = {None: "initial-backbone", False: "random-init", True: "ImageNet"}
ABLATION_PREFIX = "msamil_"
FULL_METHOD = "msamil"
# Fallback labels by name when a method's switches are not at hand (the default config's ablations).
SUFFIX_LABELS = {
    "20x_only": "20x only",
    "10x_only": "10x only",
    "5x_only": "5x only",
    "no_sffm": "no SFFM (all tissue)",
    "no_mhe": "no MHE",
    "gated_pool": "gated attention instead of DMQ",
    "frozen": "frozen backbone (two-stage, BN calibrated)",
}


def run_dir(results: str | Path, dataset: str, method: str, fold: int) -> Path:
    return Path(results) / dataset / "runs" / method / f"fold{fold}"


def lesion_dir(results: str | Path, dataset: str, fold: int) -> Path:
    return Path(results) / dataset / "lesion" / f"fold{fold}"


def is_ablation(method: str) -> bool:
    """Ablations are MsaMIL-Net variants named `msamil_<switch>`; they go to the ablation table, not the main one."""
    return method.startswith(ABLATION_PREFIX)


def main_methods(methods: Iterable[str]) -> list[str]:
    return [m for m in methods if not is_ablation(m)]


def ablation_methods(methods: Iterable[str]) -> list[str]:
    """The full model first, then its ablations in config order: the table reads as "full vs one switch off"."""
    methods = list(methods)
    return ([FULL_METHOD] if FULL_METHOD in methods else []) + [m for m in methods if is_ablation(m)]


def method_label(method: str, spec: Mapping[str, Any] | None = None,
                 scales: Sequence[str] = SCALES, pretrained: bool | None = None) -> str:
    """A human label: the kind's name (with the features it trains on) for full methods, the changed switches for
    ablations. `pretrained` (config model.pretrained, or the method's own override) names ABMIL's frozen
    features: random-init or ImageNet; None leaves it generic.

    Deriving the label from the switches (not the name) keeps it right when a user adds an ablation of their own.
    """
    spec = dict(spec or {})
    kind = spec.get("kind") or (FULL_METHOD if is_ablation(method) else method)
    if kind != FULL_METHOD:
        own = (spec.get("model") or {}).get("pretrained")
        init = INIT_LABELS[bool(own) if own is not None else pretrained]
        name = KIND_LABELS.get(kind, kind).format(init=init)
        return name if method == kind else f"{name} ({method})"
    if not spec and is_ablation(method):
        suffix = method[len(ABLATION_PREFIX):]
        return SUFFIX_LABELS.get(suffix, suffix.replace("_", " "))
    parts = []
    used = spec.get("scales")
    if used is not None and list(used) != list(scales):
        parts.append(" + ".join(used) + " only")
    if spec.get("sffm") is False:
        parts.append("no SFFM (all tissue)")
    if spec.get("mhe") is False:
        parts.append("no MHE")
    if spec.get("pooling") == "gated":
        parts.append("gated attention instead of DMQ")
    if spec.get("freeze_backbone"):
        parts.append("frozen backbone (two-stage, BN calibrated)")
    if spec.get("model") or spec.get("train"):
        parts.append("changed " + "/".join(k for k in ("model", "train") if spec.get(k)) + " settings")
    if not parts:
        return KIND_LABELS[FULL_METHOD] if method == FULL_METHOD else method
    return ", ".join(parts)


def _existing(paths: Iterable[tuple[tuple[Any, ...], Path]], what: str) -> list[tuple[tuple[Any, ...], Path]]:
    """The (key, path) pairs whose file exists; one warning per missing (dataset, method) naming its folds."""
    found: list[tuple[tuple[Any, ...], Path]] = []
    missing: dict[tuple[Any, ...], list[Any]] = {}
    for key, path in paths:
        if path.exists():
            found.append((key, path))
        else:
            missing.setdefault(key[:-1], []).append(key[-1])
    for key, folds in missing.items():
        log.warning("skipping %s %s fold(s) %s: no %s", what, "/".join(map(str, key)),
                    ",".join(map(str, folds)), what.split()[0])
    return found


def load_predictions(results: str | Path, datasets: Sequence[str], methods: Sequence[str],
                     folds: Sequence[int]) -> pd.DataFrame:
    """Every run's predictions.tsv in one frame with `dataset` and `method` columns; missing runs are skipped."""
    wanted = [((d, m, k), run_dir(results, d, m, k) / "predictions.tsv")
              for d in datasets for m in methods for k in folds]
    frames = []
    for (dataset, method, fold), path in _existing(wanted, "predictions of"):
        frame = pd.read_csv(path, sep="\t", dtype={"slide": str})
        frame.insert(0, "method", method)
        frame.insert(0, "dataset", dataset)
        frame["fold"] = fold
        frames.append(frame)
    if not frames:
        return pd.DataFrame(columns=["dataset", "method", "slide", "fold", "label", "label_name", "pred"])
    return pd.concat(frames, ignore_index=True)


def load_efficiency(results: str | Path, datasets: Sequence[str], methods: Sequence[str],
                    folds: Sequence[int]) -> pd.DataFrame:
    """Every run's efficiency.json as rows (dataset, method, fold, ...); missing runs are skipped."""
    wanted = [((d, m, k), run_dir(results, d, m, k) / "efficiency.json")
              for d in datasets for m in methods for k in folds]
    rows = []
    for (dataset, method, fold), path in _existing(wanted, "efficiency of"):
        rows.append({"dataset": dataset, "method": method, "fold": fold, **json.loads(path.read_text())})
    return pd.DataFrame(rows)


def load_history(results: str | Path, datasets: Sequence[str], folds: Sequence[int]) -> pd.DataFrame:
    """U-Net++ training histories (dataset, fold, epoch, train_loss, val_loss, val_iou)."""
    wanted = [((d, k), lesion_dir(results, d, k) / "history.tsv") for d in datasets for k in folds]
    frames = []
    for (dataset, fold), path in _existing(wanted, "lesion history of"):
        frame = pd.read_csv(path, sep="\t")
        frame.insert(0, "fold", fold)
        frame.insert(0, "dataset", dataset)
        frames.append(frame)
    if not frames:
        return pd.DataFrame(columns=["dataset", "fold", "epoch", "train_loss", "val_loss", "val_iou"])
    return pd.concat(frames, ignore_index=True)


def pick_slides(slides: pd.DataFrame, n: int) -> list[str]:
    """`n` slides spread over the classes (round robin over labels, sorted ids within a label).

    Figures then show every class, and the choice is stable across runs because it depends only on slides.tsv.
    """
    if n <= 0 or slides.empty:
        return []
    by_label = {label: sorted(group["slide"].astype(str)) for label, group in slides.groupby("label", sort=True)}
    picked: list[str] = []
    depth = 0
    while len(picked) < n and any(depth < len(v) for v in by_label.values()):
        for ids in by_label.values():
            if depth < len(ids) and len(picked) < n:
                picked.append(ids[depth])
        depth += 1
    return picked


def spread_over_datasets(picks: Mapping[str, Sequence[str]], n: int) -> list[tuple[str, str]]:
    """`n` (dataset, slide) pairs taken round robin over datasets, for cross-dataset figures such as Fig. 2."""
    out: list[tuple[str, str]] = []
    depth = 0
    while len(out) < n and any(depth < len(v) for v in picks.values()):
        for dataset, slides in picks.items():
            if depth < len(slides) and len(out) < n:
                out.append((dataset, slides[depth]))
        depth += 1
    return out


def test_fold(results: str | Path, dataset: str, slide: str, folds: Sequence[int]) -> int:
    """The fold whose test split holds `slide` (so figures show held-out predictions); the first fold if unknown."""
    path = Path(results) / dataset / "splits" / "folds.tsv"
    if path.exists():
        table = pd.read_csv(path, sep="\t", dtype={"slide": str})
        hit = table[(table["slide"] == slide) & (table["split"] == "test")]
        if not hit.empty and int(hit["fold"].iloc[0]) in folds:
            return int(hit["fold"].iloc[0])
    return int(folds[0])


class AggregatePlan:
    """Inputs and targets of the aggregate rules (rules/aggregate.smk), as plain Python.

    Kept out of the rule file because `snakemake --lint` wants rule files free of function definitions, and so
    that the target list can be unit-tested without Snakemake. `slides_table(dataset)` returns the path of the
    dataset's slides.tsv; in the workflow it goes through the inspect checkpoint, so calling it waits for that.
    """

    TABLE_NAMES = ("main_results", "ablation", "comparisons", "efficiency", "sffm")  # = tables.TABLE_NAMES
    TABLE_FORMATS = ("tsv", "md", "tex")
    E2E, TWO_STAGE = "msamil", "dino_abmil"

    def __init__(self, config: Mapping[str, Any], results: str, methods: Sequence[str], folds: Sequence[int],
                 slides_table: Any) -> None:
        self.config = config
        self.results = results
        self.methods = list(methods)
        self.folds = list(folds)
        self.slides_table = slides_table
        self.datasets = list(config["datasets"])
        self.tables = f"{results}/tables"
        self.figures = f"{results}/figures"

    def _report_cfg(self, key: str, default: int) -> int:
        return int(self.config.get("report", {}).get(key, default))

    def run_outputs(self, name: str, methods: Sequence[str] | None = None,
                    datasets: Sequence[str] | None = None) -> list[str]:
        """`name` (predictions.tsv, efficiency.json, attention.h5) of every method x fold x dataset run."""
        return [f"{self.results}/{d}/runs/{m}/fold{k}/{name}" for d in (datasets or self.datasets)
                for m in (methods or self.methods) for k in self.folds]

    def lesion_outputs(self, name: str, datasets: Sequence[str] | None = None) -> list[str]:
        return [f"{self.results}/{d}/lesion/fold{k}/{name}" for d in (datasets or self.datasets) for k in self.folds]

    def slides_frame(self, dataset: str) -> pd.DataFrame:
        return pd.read_csv(self.slides_table(dataset), sep="\t", dtype={"slide": str})

    def fig2_picks(self) -> list[tuple[str, str]]:
        """(dataset, slide) pairs for Fig. 2: spread over classes within, and round robin across, datasets."""
        n = self._report_cfg("fig2_slides", 3)
        return spread_over_datasets({d: pick_slides(self.slides_frame(d), n) for d in self.datasets}, n)

    def heatmap_slides(self, dataset: str) -> list[str]:
        return pick_slides(self.slides_frame(dataset), self._report_cfg("heatmap_slides", 3))

    def slide_images(self, pairs: Sequence[tuple[str, str]]) -> dict[str, list[str]]:
        """Cache, tissue mask, QC directory and folds of each (dataset, slide): what drawing a slide needs."""
        r = self.results
        return {
            "caches": [f"{r}/{d}/cache/{s}.h5" for d, s in pairs],
            "masks": [f"{r}/{d}/tissue/{s}.png" for d, s in pairs],
            "qc": [f"{r}/{d}/qc/{s}.png" for d, s in pairs],
            "folds": sorted({f"{r}/{d}/splits/folds.tsv" for d, _ in pairs}),
        }

    def fig2_inputs(self, wildcards: Any = None) -> dict[str, list[str]]:
        pairs = self.fig2_picks()
        datasets = sorted({d for d, _ in pairs})
        return {
            **self.slide_images(pairs),
            "selections": self.lesion_outputs("selection.h5", datasets) if datasets else [],
            "probmaps": self.lesion_outputs("probmaps.h5", datasets) if datasets else [],
        }

    def attention_inputs(self, wildcards: Any) -> dict[str, list[str]]:
        pairs = [(wildcards.dataset, s) for s in self.heatmap_slides(wildcards.dataset)]
        return {**self.slide_images(pairs),
                "attention": self.run_outputs("attention.h5", [self.E2E], [wildcards.dataset])}

    def attention_scales(self) -> list[str]:
        spec = self.config["methods"].get(self.E2E, {})
        return list(spec.get("scales", self.config.get("scales", SCALES)))

    def figure_names(self) -> list[str]:
        names = ["fig2_sffm", "fig3a_unetpp_iou", "efficiency"]
        if self.E2E in self.methods and self.TWO_STAGE in self.methods:
            names.append("fig3b_dino_vs_e2e")
        names += [f"roc_{d}" for d in self.datasets]
        if self.E2E in self.methods:
            names += [f"attention_{d}" for d in self.datasets]
        return names

    def targets(self) -> list[str]:
        """Every table, figure and QC sheet directory of the aggregate stage (for `rule all`)."""
        return ([f"{self.tables}/{n}.{e}" for n in self.TABLE_NAMES for e in self.TABLE_FORMATS]
                + [f"{self.figures}/{f}.{e}" for f in self.figure_names() for e in ("png", "pdf")]
                + [f"{self.results}/{d}/qc_sheets" for d in self.datasets])
