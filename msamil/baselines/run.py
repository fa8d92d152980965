"""One fold of one baseline, end to end: features -> (DINO | ICMIL rounds) -> ABMIL -> the shared run outputs.

Leakage guard: every phase that learns (DINO, ICMIL fine-tuning, ABMIL training) or selects a model (ABMIL
validation) is recorded in `seen_slides.tsv` with the slides it drew from, and the run refuses to finish if a
test-fold slide appears there. Test slides are only ever embedded and predicted.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pandas as pd
import torch

from msamil.baselines.abmil import ABMILResult, predict_abmil, train_abmil
from msamil.baselines.dino import dino_pretrain
from msamil.baselines.features import (
    PooledBackbone,
    SlideFeatures,
    Throughput,
    extract_slides,
    read_feature_file,
)
from msamil.baselines.icmil import icmil_config, icmil_finetune
from msamil.baselines.sampling import PatchSampler, count_patches
from msamil.config import method_settings
from msamil.errors import ConfigError
from msamil.models.backbone import create_backbone, select_device
from msamil.slides.outcomes import slide_caches
from msamil.splits import folds
from msamil.training.outputs import peak_memory_mb, predictions_frame, write_run_outputs
from msamil.util.atomic import atomic_path, write_tsv

log = logging.getLogger(__name__)

BASELINE_KINDS = ("abmil", "dino_abmil", "icmil_abmil")


@dataclass
class FoldData:
    """The fold's slides by split, their label indices, and the class names."""

    train: list[str]
    val: list[str]
    test: list[str]
    labels: dict[str, int]
    classes: list[str]

    @property
    def all(self) -> list[str]:
        return [*self.train, *self.val, *self.test]


@dataclass
class Audit:
    """Which slides each learning or model-selection phase used (written as seen_slides.tsv)."""

    rows: list[tuple[str, str]] = field(default_factory=list)

    def add(self, phase: str, slides: Sequence[str] | set[str]) -> None:
        self.rows += [(phase, s) for s in sorted(slides)]

    def check(self, test: Sequence[str]) -> None:
        leaked = sorted({s for _, s in self.rows} & set(test))
        if leaked:
            raise RuntimeError(f"test-fold slides reached training or model selection: {leaked[:5]}")

    def frame(self) -> pd.DataFrame:
        return pd.DataFrame(self.rows, columns=["phase", "slide"])


def load_fold(slides_tsv: str | Path, folds_tsv: str | Path, fold: int, classes: Sequence[str]) -> FoldData:
    """The shared fold reader (msamil.splits.folds.load_fold), as sorted split lists and a {slide: label} map."""
    split = folds.load_fold(slides_tsv, folds_tsv, int(fold), classes)
    labels = {s: lab for k in ("train", "val", "test") for s, lab in zip(split.slides[k], split.labels[k], strict=True)}
    return FoldData(*(sorted(split.slides[k]) for k in ("train", "val", "test")), labels, list(classes))


def _by_slide(paths: Sequence[str | Path] | Mapping[str, str | Path] | None) -> dict[str, Path]:
    """{slide: path}; a file's stem is its slide id (cache/{slide}.h5, features/base/{slide}.h5)."""
    if paths is None:
        return {}
    if isinstance(paths, Mapping):
        return {s: Path(p) for s, p in paths.items()}
    return {Path(p).stem: Path(p) for p in paths}


def _subset(mapping: Mapping[str, Any], slides: Sequence[str], what: str) -> dict[str, Any]:
    missing = [s for s in slides if s not in mapping]
    if missing:
        raise ConfigError(f"no {what} for slides {missing[:5]}; is the cache/features rule output complete?")
    return {s: mapping[s] for s in slides}


def _train_head(feats: Mapping[str, SlideFeatures], fold: FoldData, cfg: Mapping[str, Any], seed: int,
                device: torch.device, audit: Audit, phase: str) -> ABMILResult:
    audit.add(f"{phase}_train", fold.train)
    audit.add(f"{phase}_val", fold.val)
    return train_abmil([feats[s].features for s in fold.train], [fold.labels[s] for s in fold.train],
                       [feats[s].features for s in fold.val], [fold.labels[s] for s in fold.val],
                       n_classes=len(fold.classes), cfg=cfg, seed=seed, device=device)


def _write_attention(path: Path, slides: Sequence[str], feats: Mapping[str, SlideFeatures],
                     attentions: Sequence[np.ndarray], probs: np.ndarray) -> None:
    """attention.h5 as MsaMIL-Net writes it: one group per test slide with coords, scale_idx (all 0: 20x only),
    index and attention."""
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        f.attrs["scales"] = json.dumps(["20x"])
        for slide, att, prob in zip(slides, attentions, probs, strict=True):
            g = f.create_group(slide)
            g.create_dataset("coords", data=feats[slide].coords.astype(np.int64))
            g.create_dataset("scale_idx", data=np.zeros(len(att), dtype=np.int64))
            g.create_dataset("index", data=np.arange(len(att), dtype=np.int64))  # cache order of /20x
            g.create_dataset("attention", data=np.asarray(att, dtype=np.float32))
            g.attrs["probs"] = np.asarray(prob, dtype=np.float64)
        f.attrs["complete"] = True


def _efficiency(kind: str, device: torch.device, wall: float, patches_per_slide: float, extract: Throughput,
                train_tp: Throughput | None, epoch_s: float, phases: dict[str, Any]) -> dict[str, Any]:
    """Flat fields the efficiency table reads, plus per-phase detail.

    train_patches_per_s: backbone throughput of the phase that trains it (DINO, ICMIL); for plain ABMIL, whose
    backbone never trains, the frozen extraction rate (it is that method's training cost per patch).
    seconds_per_epoch: a DINO epoch for dino_abmil, an ABMIL epoch on features otherwise.
    """
    infer = extract.as_dict()["patches_per_s"] if extract.patches else float("nan")
    train = train_tp.as_dict()["patches_per_s"] if train_tp is not None and train_tp.patches else infer
    return {"kind": kind, "device": str(device), "train_time_s": round(wall, 3),
            "patches_per_slide": round(patches_per_slide, 2), "seconds_per_epoch": round(epoch_s, 4),
            "train_patches_per_s": train, "infer_patches_per_s": infer,
            "peak_mem_mb": round(peak_memory_mb(device), 1), "phases": phases}


def _n_params(head: ABMILResult, embedder: PooledBackbone | None, model_cfg: Mapping[str, Any]) -> int:
    """Backbone + head parameters (the whole inference model, as MsaMIL-Net reports it)."""
    if embedder is None:  # plain ABMIL: count an unloaded copy of the frozen backbone (no weights fetched)
        import timm

        embedder = timm.create_model(model_cfg["backbone"], pretrained=False, num_classes=0, global_pool="")
    return int(sum(p.numel() for p in head.model.parameters()) + sum(p.numel() for p in embedder.parameters()))


def run_baseline(*, config: Mapping[str, Any], dataset: str, method: str, fold: int, slides_tsv: str | Path,
                 folds_tsv: str | Path, run_dir: str | Path,
                 cache_paths: Sequence[str | Path] | Mapping[str, str | Path] | None = None,
                 feature_paths: Sequence[str | Path] | Mapping[str, str | Path] | None = None,
                 device: str | None = None, threads: int | None = None,
                 resources: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Run one baseline on one fold and write predictions.tsv, metrics.json, efficiency.json, attention.h5,
    train_log.tsv, best.pt and seen_slides.tsv (plus dino_loss.tsv / icmil_loss.tsv) under `run_dir`.

    `feature_paths` (the fold-independent frozen-backbone features) replace the first extraction of `abmil` and of
    ICMIL's round 0, which start from that very backbone; without them the features are extracted here.
    `resources` are the rule's: a job holding a GPU fails at once when it sees none (msamil.util.device).
    `cache_paths` default to those listed in `slides_tsv` (the workflow's slides.tsv manifest).
    """
    t0 = time.perf_counter()
    settings = method_settings(dict(config), method)
    kind = settings["kind"]
    if kind not in BASELINE_KINDS:
        raise ConfigError(f"method {method!r} has kind {kind!r}; run_baseline runs {BASELINE_KINDS}")
    if threads:
        torch.set_num_threads(int(threads))
    run_dir = Path(run_dir)
    model_cfg = settings["model"]
    seed = int(config.get("seed", 0))
    bcfg = dict(config.get("baselines") or {})
    chunk = int(bcfg.get("feature_chunk", 64))
    input_px = int(model_cfg["input_px"])
    dev = select_device(device or config.get("device", "auto"), resources)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    fold_data = load_fold(slides_tsv, folds_tsv, fold, config["dataset_config"][dataset]["classes"])
    if cache_paths is None:
        cache_paths = slide_caches(slides_tsv)
    caches = _subset(_by_slide(cache_paths), fold_data.all, "cache file")
    audit = Audit()
    extract_tp = Throughput()
    phases: dict[str, Any] = {}
    epoch_s = float("nan")
    train_tp: Throughput | None = None

    def extract(embedder: PooledBackbone) -> dict[str, SlideFeatures]:
        tp = Throughput()
        out = extract_slides(embedder, caches, input_px=input_px, chunk=chunk, device=dev, throughput=tp)
        extract_tp.add(tp.patches, tp.wall_s)
        phases.setdefault("feature_extraction", []).append(tp.as_dict())
        return out

    def precomputed() -> dict[str, SlideFeatures] | None:
        if feature_paths is None:
            return None
        files = _subset(_by_slide(feature_paths), fold_data.all, "feature file")
        feats = {s: read_feature_file(p) for s, p in files.items()}
        for p in files.values():  # extraction throughput recorded by the features rule
            with h5py.File(p, "r") as f:
                extract_tp.add(int(f.attrs.get("extract_patches", 0)), float(f.attrs.get("extract_wall_s", 0.0)))
        phases["feature_extraction_precomputed"] = extract_tp.as_dict()
        return feats

    def new_embedder() -> PooledBackbone:
        return PooledBackbone(create_backbone(dict(model_cfg), seed=seed)).to(dev)

    extra: dict[str, Any] = {}
    if kind == "abmil":
        feats = precomputed() or extract(new_embedder().eval())
        embedder = None
    elif kind == "dino_abmil":
        sampler = PatchSampler(_subset(caches, fold_data.train, "cache file"), seed=seed)
        res = dino_pretrain(create_backbone(dict(model_cfg), seed=seed), sampler, input_px=input_px,
                            cfg=bcfg.get("dino"), seed=seed, device=dev)
        sampler.close()
        audit.add("dino", res.seen_slides)
        write_tsv(run_dir / "dino_loss.tsv", pd.DataFrame(res.history), float_format="%.6g")
        phases["dino_epochs"] = res.epochs
        epoch_s = float(np.mean([e["wall_s"] for e in res.epochs]))
        train_tp = Throughput(sum(e["patches"] for e in res.epochs), sum(e["wall_s"] for e in res.epochs))
        embedder = res.teacher.embedder.eval()
        extra["dino_final_loss"] = res.history[-1]["loss"]
        feats = extract(embedder)
    else:
        icfg = icmil_config(bcfg.get("icmil"))
        embedder = new_embedder()
        feats = precomputed() or extract(embedder.eval())
        sampler = PatchSampler(_subset(caches, fold_data.train, "cache file"), seed=seed)
        train_tp = Throughput()
        loss_rows: list[dict[str, Any]] = []
        head_logs: list[dict[str, Any]] = []
        for r in range(int(icfg["rounds"])):
            head = _train_head(feats, fold_data, bcfg.get("abmil") or {}, seed + r, dev, audit, f"abmil_round{r}")
            head_logs += [{"round": r, **row} for row in head.history]
            ft = icmil_finetune(embedder, head.model, sampler, input_px=input_px, cfg=icfg, seed=seed + r,
                                device=dev)
            audit.add(f"icmil_round{r}", ft.seen_slides)
            loss_rows += [{"round": r, **row} for row in ft.history]
            train_tp.add(ft.throughput.patches, ft.throughput.wall_s)
            phases.setdefault("icmil_finetune", []).append(ft.throughput.as_dict())
            embedder = ft.embedder.eval()
            feats = extract(embedder)
        sampler.close()
        write_tsv(run_dir / "icmil_loss.tsv", pd.DataFrame(loss_rows), float_format="%.6g")
        if head_logs:
            write_tsv(run_dir / "icmil_head_log.tsv", pd.DataFrame(head_logs), float_format="%.6g")

    t_head = time.perf_counter()
    head = _train_head(feats, fold_data, bcfg.get("abmil") or {}, seed, dev, audit, "abmil")
    head_s = time.perf_counter() - t_head
    phases["abmil"] = {"wall_s": round(head_s, 3), "epochs": len(head.history), "best_epoch": head.best_epoch}
    if np.isnan(epoch_s):
        epoch_s = head_s / max(1, len(head.history))
    audit.check(fold_data.test)

    probs, atts = predict_abmil(head.model, [feats[s].features for s in fold_data.test], dev)
    preds = predictions_frame(fold_data.test, [fold_data.labels[s] for s in fold_data.test], probs, int(fold),
                              fold_data.classes)
    per_slide = float(np.mean([count_patches(caches[s]) for s in fold_data.all]))
    eff = _efficiency(kind, dev, time.perf_counter() - t0, per_slide, extract_tp, train_tp, epoch_s, phases)
    eff["n_params"] = _n_params(head, embedder, model_cfg)
    eff["epochs_run"] = len(head.history)
    write_tsv(run_dir / "train_log.tsv", pd.DataFrame(head.history), float_format="%.6g")
    write_tsv(run_dir / "seen_slides.tsv", audit.frame())
    _write_attention(run_dir / "attention.h5", fold_data.test, feats, atts, probs)
    with atomic_path(run_dir / "best.pt") as tmp:
        torch.save({"method": method, "kind": kind, "fold": int(fold), "head": head.model.state_dict(),
                    "in_dim": int(head.model.fc[0].in_features), "n_classes": len(fold_data.classes),
                    "best_epoch": head.best_epoch,
                    "embedder": None if embedder is None else embedder.backbone.state_dict()}, tmp)
    best = head.history[head.best_epoch] if head.best_epoch >= 0 else {}
    extra.update({"best_epoch": head.best_epoch, "best_val_auc": best.get("val_auc", float("nan")),
                  "method": method, "dataset": dataset, "fold": int(fold)})
    metrics = write_run_outputs(run_dir, preds, eff, extra_metrics=extra)
    log.info("%s fold %s: %s", method, fold, metrics)
    return metrics
