"""One fold of one baseline, end to end: features -> (DINO | ICMIL rounds) -> ABMIL -> the shared run outputs.

Equal footing with MsaMIL-Net (DESIGN.md section 7): the backbone starts from the fold's shared initialisation
(msamil.util.seeding stream "backbone"); every extraction with a frozen backbone (ABMIL's features, ICMIL's round
0, the re-extraction after DINO and after each ICMIL round) first calibrates its BatchNorm statistics on the fold's
training slides (msamil.models.batchnorm, the policy MsaMIL-Net uses), so features depend on the fold and are
computed here, in the run; DINO's and ICMIL's backbone budgets follow MsaMIL-Net's (`baselines.match_views`), and
efficiency.json states every method's budget alike (msamil.training.outputs.budget).

Leakage guard: every phase that learns (DINO, ICMIL fine-tuning, ABMIL training) or selects a model (ABMIL
validation) is recorded in `seen_slides.tsv` with the slides it drew from, and the run refuses to finish if a
test-fold slide appears there. Test slides are only ever embedded and predicted.
"""

from __future__ import annotations

import json
import logging
import math
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
from msamil.baselines.dino import dino_config, dino_pretrain
from msamil.baselines.features import SCALE, PooledBackbone, SlideFeatures, Throughput, extract_slides
from msamil.baselines.icmil import icmil_config, icmil_finetune
from msamil.baselines.sampling import PatchSampler, count_patches
from msamil.config import method_settings
from msamil.errors import ConfigError
from msamil.models.backbone import create_backbone, select_device, state_fingerprint, to_input
from msamil.models.batchnorm import calibrate_batchnorm
from msamil.slides.outcomes import slide_caches
from msamil.splits import folds
from msamil.training.outputs import budget, peak_memory_mb, predictions_frame, write_run_outputs
from msamil.util.atomic import atomic_path, write_tsv
from msamil.util.seeding import rng as stream_rng
from msamil.util.seeding import seed_everything, stream_seed

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


def _by_slide(paths: Sequence[str | Path] | Mapping[str, str | Path]) -> dict[str, Path]:
    """{slide: path}; a file's stem is its slide id (cache/{slide}.h5)."""
    if isinstance(paths, Mapping):
        return {s: Path(p) for s, p in paths.items()}
    return {Path(p).stem: Path(p) for p in paths}


def _subset(mapping: Mapping[str, Any], slides: Sequence[str], what: str) -> dict[str, Any]:
    missing = [s for s in slides if s not in mapping]
    if missing:
        raise ConfigError(f"no {what} for slides {missing[:5]}; is the cache rule's output complete?")
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


def _efficiency(kind: str, device: torch.device, patches_per_slide: float, extract: Throughput,
                train_tp: Throughput | None, epoch_s: float, phases: dict[str, Any]) -> dict[str, Any]:
    """Throughput fields the efficiency table reads, plus per-phase detail (the budget comes from `budget`).

    train_patches_per_s: backbone throughput of the phase that trains it (DINO, ICMIL); for plain ABMIL, whose
    backbone never trains, the frozen extraction rate (it is that method's training cost per patch).
    seconds_per_epoch: a DINO epoch for dino_abmil, an ABMIL epoch on features otherwise.
    """
    infer = extract.as_dict()["patches_per_s"] if extract.patches else float("nan")
    train = train_tp.as_dict()["patches_per_s"] if train_tp is not None and train_tp.patches else infer
    return {"kind": kind, "device": str(device), "patches_per_slide": round(patches_per_slide, 2),
            "seconds_per_epoch": round(epoch_s, 4), "train_patches_per_s": train, "infer_patches_per_s": infer,
            "phases": phases}


def _n_params(head: ABMILResult, embedder: PooledBackbone) -> int:
    """Backbone + head parameters (the whole inference model, as MsaMIL-Net reports it)."""
    return int(sum(p.numel() for p in head.model.parameters()) + sum(p.numel() for p in embedder.parameters()))


def msamil_views(config: Mapping[str, Any], n_train: int) -> int:
    """MsaMIL-Net's nominal backbone budget on a fold: train.epochs x training slides x train.bag_size patch views
    (an upper bound: early stopping and slides with fewer patches than a bag only lower it)."""
    train = config.get("train") or {}
    return int(train.get("epochs", 0)) * int(n_train) * int(train.get("bag_size", 0))


def matched_budgets(bcfg: Mapping[str, Any], config: Mapping[str, Any], n_train: int
                    ) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """DINO's and ICMIL's settings with their backbone budget set to `match_views` x MsaMIL-Net's (when set).

    DINO: total iterations = ceil(target / (batch_size x (2 + n_local_crops))) spread over its `epochs` (which keep
    setting the schedules' granularity), i.e. `patches_per_epoch` is derived. ICMIL: `iters` per round =
    ceil(target / (rounds x batch_size)). With `match_views: null` both keep their own settings.
    """
    dcfg, icfg = dino_config(bcfg.get("dino")), icmil_config(bcfg.get("icmil"))
    frac = bcfg.get("match_views")
    info: dict[str, Any] = {"match_views": frac, "msamil_nominal_views": msamil_views(config, n_train)}
    if frac is None:
        if "iters" in (bcfg.get("icmil") or {}) and (bcfg.get("icmil") or {})["iters"] is None:
            raise ConfigError("baselines.icmil.iters is null, which needs baselines.match_views to derive it")
        return dcfg, icfg, info
    target = max(1, math.ceil(float(frac) * info["msamil_nominal_views"]))
    bs, views = int(dcfg["batch_size"]), 2 + int(dcfg["n_local_crops"])
    per_epoch_iters = max(1, math.ceil(math.ceil(target / (bs * views)) / int(dcfg["epochs"])))
    dcfg["patches_per_epoch"] = per_epoch_iters * bs
    icfg["iters"] = max(1, math.ceil(target / (int(icfg["rounds"]) * int(icfg["batch_size"]))))
    info.update(target_views=target, dino_patches_per_epoch=dcfg["patches_per_epoch"], icmil_iters=icfg["iters"])
    return dcfg, icfg, info


FEATURES = {
    "abmil": "frozen initial backbone, BatchNorm calibrated on training slides",
    "dino_abmil": "DINO-pretrained teacher backbone, BatchNorm calibrated on training slides",
    "icmil_abmil": "ICMIL-fine-tuned backbone, BatchNorm calibrated on training slides",
}


def run_baseline(*, config: Mapping[str, Any], dataset: str, method: str, fold: int, slides_tsv: str | Path,
                 folds_tsv: str | Path, run_dir: str | Path,
                 cache_paths: Sequence[str | Path] | Mapping[str, str | Path] | None = None,
                 device: str | None = None, threads: int | None = None,
                 resources: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Run one baseline on one fold and write predictions.tsv, metrics.json, efficiency.json, attention.h5,
    train_log.tsv, best.pt and seen_slides.tsv (plus dino_loss.tsv / icmil_loss.tsv) under `run_dir`.

    Features of every slide of the dataset are extracted here (they depend on the fold: BatchNorm statistics
    come from the fold's training slides). `resources` are the rule's: a job holding a GPU fails at once when it
    sees none (msamil.util.device). `cache_paths` default to those listed in `slides_tsv` (the workflow's
    slides.tsv manifest).
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
    train_cfg = settings["train"]
    seed = int(config.get("seed", 0))
    seed_everything(seed, fold)
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
    dino_cfg, icfg, match = matched_budgets(bcfg, {"train": train_cfg}, len(fold_data.train))
    audit = Audit()
    extract_tp = Throughput()
    phases: dict[str, Any] = {"budget_match": match}
    epoch_s = float("nan")
    train_tp: Throughput | None = None
    steps = views = 0

    def calibrate(embedder: PooledBackbone) -> PooledBackbone:
        """The shared BatchNorm policy on the fold's training slides, then eval mode for extraction."""
        from msamil.cache.bags import BagReader

        used = calibrate_batchnorm(
            embedder.backbone, fold_data.train, lambda s: BagReader(caches[s], scales=[SCALE]),
            int(train_cfg.get("bn_calib_patches", 0)), stream_rng(seed, fold, "bn_calib"),
            lambda x: to_input(x, input_px, dev), int(train_cfg.get("micro_batch", chunk)), dev)
        phases.setdefault("bn_calibration_patches", []).append(used)
        return embedder.eval()

    def extract(embedder: PooledBackbone) -> dict[str, SlideFeatures]:
        tp = Throughput()
        out = extract_slides(calibrate(embedder), caches, input_px=input_px, chunk=chunk, device=dev,
                             throughput=tp)
        extract_tp.add(tp.patches, tp.wall_s)
        phases.setdefault("feature_extraction", []).append(tp.as_dict())
        return out

    backbone = create_backbone(dict(model_cfg), seed=stream_seed(seed, fold, "backbone"))
    backbone_init = state_fingerprint(backbone)
    embedder = PooledBackbone(backbone).to(dev)
    extra: dict[str, Any] = {}
    if kind == "abmil":
        feats = extract(embedder)
    elif kind == "dino_abmil":
        sampler = PatchSampler(_subset(caches, fold_data.train, "cache file"), seed=stream_seed(seed, fold, "data"))
        res = dino_pretrain(backbone, sampler, input_px=input_px, cfg=dino_cfg,
                            seed=stream_seed(seed, fold, "augment"), device=dev)
        sampler.close()
        audit.add("dino", res.seen_slides)
        write_tsv(run_dir / "dino_loss.tsv", pd.DataFrame(res.history), float_format="%.6g")
        phases["dino_epochs"] = res.epochs
        epoch_s = float(np.mean([e["wall_s"] for e in res.epochs]))
        train_tp = Throughput(sum(e["patches"] for e in res.epochs), sum(e["wall_s"] for e in res.epochs))
        steps = len(res.history)
        views = int(sum(e["patches"] * e["crops_per_patch"] for e in res.epochs))
        embedder = res.teacher.embedder
        extra["dino_final_loss"] = res.history[-1]["loss"]
        feats = extract(embedder)
    else:
        feats = extract(embedder)
        sampler = PatchSampler(_subset(caches, fold_data.train, "cache file"), seed=stream_seed(seed, fold, "data"))
        train_tp = Throughput()
        loss_rows: list[dict[str, Any]] = []
        head_logs: list[dict[str, Any]] = []
        for r in range(int(icfg["rounds"])):
            head = _train_head(feats, fold_data, bcfg.get("abmil") or {}, stream_seed(seed, fold, f"head/round{r}"),
                               dev, audit, f"abmil_round{r}")
            head_logs += [{"round": r, **row} for row in head.history]
            ft = icmil_finetune(embedder, head.model, sampler, input_px=input_px, cfg=icfg,
                                seed=stream_seed(seed, fold, f"augment/round{r}"), device=dev)
            audit.add(f"icmil_round{r}", ft.seen_slides)
            loss_rows += [{"round": r, **row} for row in ft.history]
            train_tp.add(ft.throughput.patches, ft.throughput.wall_s)
            phases.setdefault("icmil_finetune", []).append(ft.throughput.as_dict())
            steps += len(ft.history)
            views += ft.throughput.patches
            embedder = ft.embedder
            feats = extract(embedder)
        sampler.close()
        write_tsv(run_dir / "icmil_loss.tsv", pd.DataFrame(loss_rows), float_format="%.6g")
        if head_logs:
            write_tsv(run_dir / "icmil_head_log.tsv", pd.DataFrame(head_logs), float_format="%.6g")

    t_head = time.perf_counter()
    head = _train_head(feats, fold_data, bcfg.get("abmil") or {}, stream_seed(seed, fold, "head"), dev, audit,
                       "abmil")
    head_s = time.perf_counter() - t_head
    phases["abmil"] = {"wall_s": round(head_s, 3), "epochs": len(head.history), "best_epoch": head.best_epoch}
    if np.isnan(epoch_s):
        epoch_s = head_s / max(1, len(head.history))
    audit.check(fold_data.test)

    probs, atts = predict_abmil(head.model, [feats[s].features for s in fold_data.test], dev)
    preds = predictions_frame(fold_data.test, [fold_data.labels[s] for s in fold_data.test], probs, int(fold),
                              fold_data.classes)
    per_slide = float(np.mean([count_patches(caches[s]) for s in fold_data.all]))
    eff = {**budget(backbone_steps=steps, backbone_patch_views=views, wall_s=time.perf_counter() - t0,
                    peak_mem_mb=peak_memory_mb(dev), backbone_init_sha256=backbone_init),
           **_efficiency(kind, dev, per_slide, extract_tp, train_tp, epoch_s, phases),
           "features": FEATURES[kind], "n_params": _n_params(head, embedder), "epochs_run": len(head.history)}
    write_tsv(run_dir / "train_log.tsv", pd.DataFrame(head.history), float_format="%.6g")
    write_tsv(run_dir / "seen_slides.tsv", audit.frame())
    _write_attention(run_dir / "attention.h5", fold_data.test, feats, atts, probs)
    with atomic_path(run_dir / "best.pt") as tmp:
        torch.save({"method": method, "kind": kind, "fold": int(fold), "head": head.model.state_dict(),
                    "in_dim": int(head.model.fc[0].in_features), "n_classes": len(fold_data.classes),
                    "best_epoch": head.best_epoch, "embedder": embedder.backbone.state_dict()}, tmp)
    best = head.history[head.best_epoch] if head.best_epoch >= 0 else {}
    extra.update({"best_epoch": head.best_epoch, "best_val_auc": best.get("val_auc", float("nan")),
                  "method": method, "dataset": dataset, "fold": int(fold)})
    metrics = write_run_outputs(run_dir, preds, eff, extra_metrics=extra)
    log.info("%s fold %s: %s", method, fold, metrics)
    return metrics
