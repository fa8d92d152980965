"""End-to-end MsaMIL-Net training for one (dataset, method, fold), then inference on the fold's test slides.

One slide per step: a bag of `bag_size` patches sampled across the method's scales runs through the backbone in
micro-batches under activation checkpointing (memory bounded by the micro-batch, not the bag), gradients
accumulate over `accum_slides` slides, AdamW with warm-up + cosine per optimizer step. Validation AUC each epoch
selects `best.pt`; `last.pt` (with every RNG state and the best weights so far) lets a killed job resume
bit-exactly on CPU, whichever epoch it was killed in (msamil.training.checkpoint: mirror, checksums, safe loads).
Validation and inference see what training saw: every selected patch is embedded once, then scale-balanced bags
of `bag_size` (the training distribution) are aggregated and their probabilities averaged
(msamil.training.inference.predict_slide).

Seeds: msamil.util.seeding (backbone, model, data streams of (seed, fold), shared with the baselines).

BatchNorm: one slide per step means every micro-batch comes from one slide, so batch statistics would normalise
away exactly the between-slide differences the classifier needs, and would not match the running statistics used
at inference. With `bn_calib_patches > 0` the backbone's BatchNorm statistics are therefore estimated from
patches of many training slides (msamil.models.batchnorm, the policy every method shares) before the first step
and after every epoch, and kept fixed while training (affine weights still learn). That also makes
micro-batching exactly equivalent to one full-bag pass. A frozen backbone is calibrated once, before training.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import logging
import math
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from msamil.config import method_settings
from msamil.errors import ConfigError, MsamilError, SlideError
from msamil.models import build_model
from msamil.models.backbone import select_device, state_fingerprint
from msamil.models.batchnorm import calibrate_batchnorm
from msamil.slides.outcomes import slide_caches
from msamil.splits.folds import FoldSplit, load_fold
from msamil.training import checkpoint as ckpt
from msamil.training.data import SlideData, class_interleaved_order
from msamil.training.inference import bag_forward, policy, predict_slide, prepare_input
from msamil.training.loader import BagLoader, BagRequest, loader_workers
from msamil.training.metrics import classification_metrics
from msamil.training.outputs import budget, peak_memory_mb, predictions_frame, write_run_outputs
from msamil.training.schedule import warmup_cosine
from msamil.util.atomic import atomic_path, write_tsv
from msamil.util.seeding import seed_everything, stream_seed

log = logging.getLogger("msamil.training.trainer")

RUN_FILES = ("predictions.tsv", "metrics.json", "efficiency.json", "best.pt", "last.pt", "train_log.tsv",
             "attention.h5")
RESUME_DIR = ".resume"  # outside Snakemake's declared outputs, so it survives their deletion
LOG_COLUMNS = ["epoch", "train_loss", "val_loss", "val_auc", "val_acc", "seconds", "lr"]


# ------------------------------------------------------------------------------------------------------ state
@dataclass
class TrainState:
    """Counters that must survive a restart, beside the model/optimizer/scheduler/RNG states."""

    epoch: int = 0
    best_key: tuple[float, float] = (-math.inf, -math.inf)
    best_epoch: int = -1
    bad_epochs: int = 0
    done: bool = False
    history: list[dict[str, float]] = field(default_factory=list)
    train_patches: int = 0
    train_seconds: float = 0.0


def _score_key(auc: float, loss: float) -> tuple[float, float]:
    """Model selection: higher val AUC first (NaN counts as worst), then lower val loss."""
    return (auc if math.isfinite(auc) else -math.inf, -loss if math.isfinite(loss) else -math.inf)


def _fingerprint(settings: dict[str, Any], classes: Sequence[str], seed: int, split: FoldSplit) -> str:
    blob = json.dumps({"settings": settings, "classes": list(classes), "seed": seed, "slides": split.slides},
                      sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


@contextlib.contextmanager
def _deterministic(device: torch.device) -> Iterator[None]:
    """Deterministic kernels on CPU for the duration of a run, restoring the caller's setting afterwards."""
    prev, prev_warn = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    if device.type == "cpu":
        torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(prev, warn_only=prev_warn)


def _param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """No weight decay on biases, norms, position embeddings, CLS and queries (1-D or token parameters)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        token = name.endswith((".pos", ".cls", ".queries"))
        (no_decay if p.ndim <= 1 or token else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


# ---------------------------------------------------------------------------------------------------- trainer
class Trainer:
    """Holds one run's model, optimizer, schedule and RNGs; `fit` trains, `infer` writes the test outputs."""

    def __init__(self, config: dict[str, Any], dataset: str, method: str, fold: int, split: FoldSplit,
                 data: SlideData, out_dir: str | Path, device: torch.device, progress: bool = True,
                 workers: int = 0) -> None:
        self.settings = method_settings(config, method)
        if self.settings["kind"] != "msamil":
            raise ConfigError(f"methods.{method}.kind is {self.settings['kind']!r}; run_training handles msamil")
        self.tcfg, self.mcfg = self.settings["train"], self.settings["model"]
        self.classes = list(config["dataset_config"][dataset]["classes"])
        self.dataset, self.method, self.fold = dataset, method, fold
        self.split, self.data, self.device, self.progress = split, data, device, progress
        self.workers = workers  # data-loading threads (msamil.training.loader)
        self.out = Path(out_dir)
        self.seed = int(config["seed"])
        seed_everything(self.seed, fold)
        self.rng = np.random.default_rng(stream_seed(self.seed, fold, "data"))
        self.model = build_model(self.settings, len(self.classes),
                                 seed=stream_seed(self.seed, fold, "backbone")).to(device)
        self.backbone_init = state_fingerprint(self.model.msfem.backbone)
        if device.type == "cuda":
            self.model = self.model.to(memory_format=torch.channels_last)
        self.bn_calib = int(self.tcfg.get("bn_calib_patches", 0))
        self.model.frozen_bn = self.bn_calib > 0
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(_param_groups(self.model, float(self.tcfg["weight_decay"])),
                                           lr=float(self.tcfg["lr"]))
        self.accum = max(1, int(self.tcfg["accum_slides"]))
        self.steps_per_epoch = math.ceil(len(split.slides["train"]) / self.accum)
        self.epochs = int(self.tcfg["epochs"])
        self.scheduler = warmup_cosine(self.optimizer, self.epochs * self.steps_per_epoch,
                                       int(self.tcfg.get("warmup_epochs", 0)) * self.steps_per_epoch)
        self.state = TrainState()
        self.best: dict[str, Any] | None = None  # {"model": cpu state dict, "epoch", "val"}: also kept in last.pt
        self.fingerprint = _fingerprint(self.settings, self.classes, self.seed, split)
        self.input_px = int(self.mcfg["input_px"])

    # -- checkpoints
    def _last_paths(self) -> list[Path]:
        return [self.out / "last.pt", self.out / RESUME_DIR / "last.pt"]

    def resume(self) -> bool:
        """Continue from the first trustworthy last.pt (the declared one, else its mirror); False: start fresh.

        A file that fails its checksum, will not load or will not restore is moved aside with one warning naming
        it, never a dead end. One written with other settings, slides or seed is stale, not damaged: it is
        skipped and overwritten by the next epoch. best.pt is rewritten from the best weights kept in last.pt
        (Snakemake deletes it before a rerun, and a resumed run may never beat its restored best score).
        """
        record = ckpt.checksum_path(self._last_paths()[1])
        for path in self._last_paths():
            if not path.exists():
                continue
            try:
                blob = ckpt.load(path, record if record.exists() or path.parent.name == RESUME_DIR else None)
                if blob.get("fingerprint") != self.fingerprint:
                    log.warning("%s was written with other settings, slides or seed; starting fresh", path)
                    continue
                self._restore(blob, path)
            except ckpt.CheckpointError as err:
                ckpt.set_aside(err)
                continue
            if not (self.out / "last.pt").exists():  # the declared output, as the same (checksummed) bytes
                with atomic_path(self.out / "last.pt") as tmp:
                    shutil.copyfile(path, tmp)
            if self.best is not None:
                self._write_best()
            log.info("resumed from %s after epoch %d (best epoch %d)", path, self.state.epoch, self.state.best_epoch)
            return True
        return False

    def _restore(self, blob: dict[str, Any], path: Path) -> None:
        """Load every state from `blob`, or nothing: a failure puts back the fresh run's states."""
        fresh = (copy.deepcopy(self.model.state_dict()), copy.deepcopy(self.optimizer.state_dict()),
                 copy.deepcopy(self.scheduler.state_dict()), ckpt.rng_state(self.rng))
        try:
            state = TrainState(**blob["state"])
            state.best_key = tuple(state.best_key)
            best = blob["best"]
            if (best is None) != (state.best_epoch < 0):
                raise ValueError("best weights and best epoch disagree")
            self.model.load_state_dict(blob["model"])
            self.optimizer.load_state_dict(blob["optimizer"])
            self.scheduler.load_state_dict(blob["scheduler"])
            ckpt.set_rng_state(blob["rng"], self.rng)
        except (KeyError, TypeError, ValueError, RuntimeError) as exc:
            self.model.load_state_dict(fresh[0])
            self.optimizer.load_state_dict(fresh[1])
            self.scheduler.load_state_dict(fresh[2])
            ckpt.set_rng_state(fresh[3], self.rng)
            raise ckpt.CheckpointError(path, f"not a resumable state ({type(exc).__name__}: {exc})") from exc
        self.state, self.best = state, best

    def _save_last(self) -> None:
        blob = {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "rng": ckpt.rng_state(self.rng),
                "state": vars(self.state), "best": self.best, "fingerprint": self.fingerprint,
                "method": self.method, "fold": self.fold}
        ckpt.save_with_mirror(self.out / "last.pt", self.out / RESUME_DIR / "last.pt", blob)

    def _save_best(self, val: dict[str, float]) -> None:
        weights = {k: v.detach().to("cpu", copy=True) for k, v in self.model.state_dict().items()}
        self.best = {"model": weights, "epoch": self.state.epoch, "val": val}
        self._write_best()

    def _write_best(self) -> None:
        assert self.best is not None
        ckpt.save(self.out / "best.pt", {**self.best, "settings": self.settings, "classes": self.classes,
                                          "fold": self.fold, "dataset": self.dataset})

    def write_log(self) -> None:
        write_tsv(self.out / "train_log.tsv", pd.DataFrame(self.state.history, columns=LOG_COLUMNS),
                  float_format="%.6f")

    # -- one epoch
    def recalibrate_bn(self) -> None:
        """Re-estimate backbone BatchNorm statistics on patches of many training slides (msamil.models.batchnorm)."""
        calibrate_batchnorm(self.model.msfem.backbone, self.split.slides["train"], self.data.open, self.bn_calib,
                            self.rng, lambda x: prepare_input(x, self.input_px, self.device),
                            int(self.tcfg["micro_batch"]), self.device)

    def train_epoch(self) -> tuple[float, int, float]:
        """One pass over the training slides in a seeded order; returns (mean loss, patches, seconds)."""
        self.model.train()
        if self.bn_calib and self.state.epoch == 0:
            self.recalibrate_bn()  # before the first step; afterwards at the end of every epoch (below)
        slides, labels = self.split.slides["train"], self.split.labels["train"]
        if self.tcfg.get("interleave_classes", False):
            order = class_interleaved_order(labels, self.rng)
        else:
            order = self.rng.permutation(len(slides))
        n, total, patches = len(order), 0.0, 0
        start = time.perf_counter()
        self.optimizer.zero_grad(set_to_none=True)
        bar = tqdm(order, desc=f"{self.method} fold{self.fold} epoch {self.state.epoch + 1}/{self.epochs}",
                   unit="slide", disable=not self.progress, mininterval=5.0)
        # Bags are read, decoded and augmented on `workers` threads ahead of the model; every random draw stays in
        # this thread and in this order, so they are the same bags for any worker count (msamil.training.loader).
        requests = [BagRequest(slides[j], int(self.tcfg["bag_size"]), bool(self.tcfg.get("scale_balanced", False)),
                               bool(self.tcfg.get("augment", False))) for j in order]
        with BagLoader(self.data, self.workers) as loader:
            for i, (j, bag) in enumerate(zip(bar, loader.bags(requests, self.rng), strict=True)):
                group_start = (i // self.accum) * self.accum
                group_size = min(self.accum, n - group_start)
                if len(bag.imgs) == 0:
                    raise SlideError(slides[j], "no selected patches at the method's scales",
                                     "check the cache and the SFFM selection (fallback_k) of this slide")
                logits, _ = bag_forward(self.model, bag, self.device, self.input_px, int(self.tcfg["micro_batch"]),
                                        bool(self.tcfg.get("checkpointing", True)))
                target = torch.tensor([labels[j]], device=self.device)
                loss = F.cross_entropy(logits.unsqueeze(0), target)
                (loss / group_size).backward()
                total += float(loss.detach())
                patches += len(bag.imgs)
                if i + 1 == group_start + group_size:
                    self._optimizer_step()
                bar.set_postfix(loss=f"{total / (i + 1):.4f}", lr=f"{self.scheduler.get_last_lr()[0]:.2e}")
        seconds = time.perf_counter() - start
        if self.bn_calib and not self.settings["freeze_backbone"]:
            self.recalibrate_bn()  # statistics of the weights just trained: validation, best.pt, next epoch
        return total / max(1, n), patches, seconds

    def _optimizer_step(self) -> None:
        clip = self.tcfg.get("clip_grad")
        if clip:
            torch.nn.utils.clip_grad_norm_(self.params, float(clip))
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)

    def evaluate(self, split: str) -> tuple[dict[str, float], list[dict[str, np.ndarray]]]:
        """Loss and metrics of every slide in `split` under the training bag policy; eval mode, no grad."""
        self.model.eval()
        outs, probs = [], []
        chunk = int(self.tcfg.get("infer_chunk", 64))
        for slide in self.split.slides[split]:
            with self.data.open(slide) as reader:
                out = predict_slide(self.model, reader, self.device, self.input_px, chunk, slide,
                                    **policy(self.tcfg, self.seed, self.fold, slide, validation=split == "val"))
            out["slide"] = slide
            outs.append(out)
            probs.append(torch.softmax(torch.as_tensor(out["logits"]), dim=0).numpy())
        self.model.train()
        if not outs:
            return {"loss": math.nan, "auc": math.nan, "acc": math.nan}, outs
        labels = np.asarray(self.split.labels[split])
        logits = torch.as_tensor(np.stack([o["logits"] for o in outs]))
        loss = float(F.cross_entropy(logits, torch.as_tensor(labels)))
        metrics = classification_metrics(labels, np.stack(probs))
        return {"loss": loss, "auc": metrics["auc"], "acc": metrics["acc"]}, outs

    # -- the whole run
    def fit(self, stop_after_epoch: int | None = None) -> bool:
        """Train until `epochs` or early stopping; True when finished (False: stopped early by the caller)."""
        patience = int(self.tcfg.get("patience", self.epochs))
        while not self.state.done:
            t0 = time.perf_counter()
            train_loss, patches, seconds = self.train_epoch()
            val, _ = self.evaluate("val") if self.split.slides["val"] else ({"loss": train_loss, "auc": math.nan,
                                                                             "acc": math.nan}, [])
            self.state.epoch += 1
            self.state.train_patches += patches
            self.state.train_seconds += seconds
            key = _score_key(val["auc"], val["loss"])
            if key > tuple(self.state.best_key):
                self.state.best_key, self.state.best_epoch, self.state.bad_epochs = key, self.state.epoch, 0
                self._save_best(val)
            else:
                self.state.bad_epochs += 1
            self.state.history.append({
                "epoch": self.state.epoch, "train_loss": train_loss, "val_loss": val["loss"], "val_auc": val["auc"],
                "val_acc": val["acc"], "seconds": time.perf_counter() - t0,
                "lr": self.scheduler.get_last_lr()[0]})
            log.info("epoch %d: train_loss %.4f val_loss %.4f val_auc %.4f", self.state.epoch, train_loss,
                     val["loss"], val["auc"])
            if self.state.epoch >= self.epochs or self.state.bad_epochs >= patience:
                self.state.done = True
            self._save_last()
            self.write_log()
            if stop_after_epoch is not None and self.state.epoch >= stop_after_epoch and not self.state.done:
                return False
        return True

    def infer(self) -> dict[str, Any]:
        """Best weights -> predictions.tsv, metrics.json, efficiency.json, attention.h5 for the test slides."""
        best = self.best
        if best is None:
            raise MsamilError(f"{self.method} fold {self.fold}: no epoch of {self.state.epoch} had a finite "
                              f"validation loss (training diverged); lower train.lr or check the fold's slides")
        self.model.load_state_dict(best["model"])
        start = time.perf_counter()
        metrics_val, outs = self.evaluate("test")
        seconds = time.perf_counter() - start
        n_patches = [len(o["attention"]) for o in outs]
        probs = np.stack([torch.softmax(torch.as_tensor(o["logits"]), 0).numpy() for o in outs])
        frame = predictions_frame([o["slide"] for o in outs], self.split.labels["test"], probs, self.fold,
                                  self.classes)
        hist = self.state.history
        trains_backbone = not self.settings["freeze_backbone"]
        efficiency = {
            **budget(backbone_steps=self.state.epoch * self.steps_per_epoch if trains_backbone else 0,
                     backbone_patch_views=self.state.train_patches if trains_backbone else 0,
                     wall_s=sum(h["seconds"] for h in hist) + seconds, peak_mem_mb=peak_memory_mb(self.device),
                     backbone_init_sha256=self.backbone_init),
            "patches_per_slide": float(np.mean(n_patches)),
            "seconds_per_epoch": float(np.mean([h["seconds"] for h in hist])) if hist else math.nan,
            "train_patches_per_s": self.state.train_patches / max(self.state.train_seconds, 1e-9),
            "infer_patches_per_s": float(sum(n_patches)) / max(seconds, 1e-9),
            "infer_bags_per_slide": float(np.mean([int(o["n_bags"]) for o in outs])),
            "device": str(self.device),
            "n_params": int(sum(p.numel() for p in self.model.parameters())),
            "epochs_run": self.state.epoch,
        }
        self._write_attention(outs)
        extra = {"best_epoch": best["epoch"], "best_val_auc": best["val"]["auc"], "method": self.method,
                 "dataset": self.dataset, "fold": self.fold}
        return write_run_outputs(self.out, frame, efficiency, extra)

    def _write_attention(self, outs: list[dict[str, Any]]) -> None:
        import h5py

        with atomic_path(self.out / "attention.h5") as tmp, h5py.File(tmp, "w") as h5:
            h5.attrs["scales"] = json.dumps(self.settings["scales"])
            for o in outs:
                g = h5.create_group(o["slide"])
                for key in ("coords", "scale_idx", "index", "attention"):
                    g.create_dataset(key, data=o[key])
                g.attrs["logits"] = o["logits"]
            h5.attrs["complete"] = True


def run_training(config: dict[str, Any], dataset: str, method: str, fold: int, *, slides_tsv: str | Path,
                 folds_tsv: str | Path, selection: str | Path | None, out_dir: str | Path,
                 caches: Sequence[str | Path] | None = None, device: str | torch.device | None = None, threads: int | None = None,
                 reader_factory: Callable[..., Any] | None = None, stop_after_epoch: int | None = None,
                 progress: bool = True, resources: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """Train one MsaMIL-Net run (resuming from last.pt when present) and write its outputs under `out_dir`.

    `selection` is the fold's SFFM selection.h5 (ignored when the method has `sffm: false`). `caches` default to
    those listed in `slides_tsv` (the workflow's slides.tsv manifest). `reader_factory`
    replaces `msamil.cache.bags.BagReader` (tests). `stop_after_epoch` stops as a kill would, after that epoch's
    checkpoint and before inference (returns None). Otherwise returns the test metrics. `resources` are the
    rule's (a job holding a GPU fails at once when it sees none, msamil.util.device).
    """
    settings = method_settings(config, method)
    if settings["sffm"] and selection is None:
        raise ConfigError(f"method {method!r} uses SFFM (sffm: true) but no selection.h5 was given")
    if threads:
        torch.set_num_threads(int(threads))
    dev = torch.device(device) if device is not None else select_device(config.get("device", "auto"), resources)
    classes = list(config["dataset_config"][dataset]["classes"])
    split = load_fold(slides_tsv, folds_tsv, int(fold), classes)
    if caches is None:
        caches = list(slide_caches(slides_tsv).values())
    data = SlideData(caches, selection if settings["sffm"] else None, settings["scales"], reader_factory)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with _deterministic(dev):
        trainer = Trainer(config, dataset, method, int(fold), split, data, out, dev, progress,
                          workers=loader_workers(threads, dev.type))
        trainer.resume()
        if not trainer.fit(stop_after_epoch):
            return None
        trainer.write_log()  # also when a resumed, finished run ran no epoch (Snakemake deleted the old one)
        metrics = trainer.infer()
    mirror = out / RESUME_DIR / "last.pt"
    for path in (mirror, ckpt.checksum_path(mirror)):  # finished: a rerun must retrain, not resume
        path.unlink(missing_ok=True)
    with contextlib.suppress(OSError):
        (out / RESUME_DIR).rmdir()
    return metrics
