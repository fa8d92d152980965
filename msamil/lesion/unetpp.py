"""Per-fold U-Net++ lesion segmentation at a fixed low MPP (the SFFM's segmenter).

Why per fold: lesion masks can give the slide label away (benign slides have none), so the segmenter of fold k sees
only fold k's training slides; its validation slides give the loss and IoU curve, its test slides are never read
here. The slide is taken whole at `seg_mpp` (aspect ratio kept, unlike the paper's 1024x1024 squash), cut into
square tiles for training and predicted in overlapping windows for inference.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pandas as pd
import torch
from torch import nn
from tqdm import tqdm

from msamil.errors import ConfigError, MsamilError
from msamil.lesion.annotation_masks import has_annotation, lesion_mask, mask_shape
from msamil.util.atomic import atomic_path, write_tsv

log = logging.getLogger(__name__)

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)
HISTORY_COLUMNS = ["epoch", "train_loss", "val_loss", "val_iou"]
PAD_VALUE = 255  # slides are white outside the tissue, so padding looks like background


class NoLesionError(MsamilError):
    """A fold's training slides contain no lesion pixel: the segmenter would learn 'never lesion'."""


@dataclass
class SegSample:
    """One slide on the segmentation grid: RGB image and (when annotated) its boolean lesion mask."""

    slide: str
    image: np.ndarray
    mask: np.ndarray | None = None


# --------------------------------------------------------------------------------------------------- model
def build_model(encoder: str, encoder_weights: str | None = None, encoder_depth: int = 5,
                decoder_channels: tuple[int, ...] | None = None) -> nn.Module:
    """U-Net++ with one output channel; never downloads: weights only from a local file.

    `encoder_depth` and `decoder_channels` shrink the net for CPU demos (smp's defaults: 5 and 256..16).
    """
    import segmentation_models_pytorch as smp

    decoder = tuple(decoder_channels) if decoder_channels else (256, 128, 64, 32, 16)[:encoder_depth]
    model = smp.UnetPlusPlus(encoder_name=encoder, encoder_weights=None, in_channels=3, classes=1,
                             encoder_depth=encoder_depth, decoder_channels=decoder)
    if encoder_weights:
        path = Path(encoder_weights)
        if not path.is_file():
            raise ConfigError(f"lesion.encoder_weights: {path} is not a file; give a local weights file or null")
        state = torch.load(path, map_location="cpu", weights_only=True)
        if isinstance(state, dict) and "state_dict" in state:
            state = state["state_dict"]
        state = {k.removeprefix("encoder."): v for k, v in state.items()}
        own = model.encoder.state_dict()
        matched = {k: v for k, v in state.items() if k in own and tuple(own[k].shape) == tuple(v.shape)}
        if not matched:
            raise ConfigError(f"lesion.encoder_weights: no tensor of {path} matches encoder {encoder!r}")
        own.update(matched)
        nn.Module.load_state_dict(model.encoder, own)  # smp's override drops classifier keys; bypass it
        log.info("encoder weights from %s: %d of %d encoder tensors loaded, %d file tensors unused", path,
                 len(matched), len(own), len(state) - len(matched))
    return model


def load_model(path: str | Path, device: torch.device | str = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """Load `unetpp.pt`: the model in eval mode on `device` and the checkpoint's metadata.

    weights_only=True: the file is tensors and plain values, so a foreign or tampered file cannot run code.
    """
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated, not a checkpoint, or a pickle that wants to run code
        detail = " ".join(str(exc).split())[:200]
        raise MsamilError(f"lesion model {path} is unreadable ({type(exc).__name__}: {detail}); delete it and "
                          f"rerun (the lesion_train rule rebuilds it)") from exc
    model = build_model(ckpt["encoder"], encoder_depth=ckpt.get("encoder_depth", 5),
                        decoder_channels=ckpt.get("decoder_channels"))
    model.load_state_dict(ckpt["state_dict"])
    model.to(device).eval()
    meta = {k: v for k, v in ckpt.items() if k != "state_dict"}
    return model, meta


def round_up(n: int, multiple: int = 32) -> int:
    return int(math.ceil(n / multiple) * multiple)


def _normalise(tiles: np.ndarray) -> torch.Tensor:
    """uint8 (N, H, W, 3) -> float (N, 3, H, W) with ImageNet statistics (what pretrained encoders expect)."""
    x = (tiles.astype(np.float32) / 255.0 - IMAGENET_MEAN) / IMAGENET_STD
    return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))


def bce_dice_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """BCE + soft Dice (over the whole batch): BCE for calibrated pixels, Dice against the lesion imbalance."""
    bce = nn.functional.binary_cross_entropy_with_logits(logits, target)
    prob = torch.sigmoid(logits)
    inter = (prob * target).sum()
    dice = 1.0 - (2.0 * inter + 1.0) / (prob.sum() + target.sum() + 1.0)
    return bce + dice


# --------------------------------------------------------------------------------------------------- tiles
def _pad_to(image: np.ndarray, rows: int, cols: int, value: int) -> np.ndarray:
    pad_r, pad_c = max(0, rows - image.shape[0]), max(0, cols - image.shape[1])
    if pad_r == 0 and pad_c == 0:
        return image
    widths = [(0, pad_r), (0, pad_c)] + [(0, 0)] * (image.ndim - 2)
    return np.pad(image, widths, mode="constant", constant_values=value)


def sample_tiles(samples: list[SegSample], tile: int, rng: np.random.Generator
                 ) -> tuple[np.ndarray, np.ndarray]:
    """One epoch of random training tiles with flips and 90-degree rotations.

    Each slide gives 2x as many tiles as it would take to cover it; half are centred (with jitter) on a random
    lesion pixel when the slide has one, so small lesions are seen every epoch despite their low area share.
    """
    imgs, masks = [], []
    for s in samples:
        assert s.mask is not None
        image = _pad_to(s.image, tile, tile, PAD_VALUE)
        mask = _pad_to(s.mask.astype(np.uint8), tile, tile, 0)
        rows, cols = mask.shape
        n = 2 * max(1, math.ceil(rows / tile) * math.ceil(cols / tile))
        lesion_px = np.flatnonzero(mask.ravel())
        for _ in range(n):
            if len(lesion_px) and rng.random() < 0.5:
                r, c = divmod(int(lesion_px[rng.integers(len(lesion_px))]), cols)
                r0 = r - tile // 2 + int(rng.integers(-tile // 4, tile // 4 + 1))
                c0 = c - tile // 2 + int(rng.integers(-tile // 4, tile // 4 + 1))
            else:
                r0 = int(rng.integers(0, rows - tile + 1))
                c0 = int(rng.integers(0, cols - tile + 1))
            r0 = min(max(r0, 0), rows - tile)
            c0 = min(max(c0, 0), cols - tile)
            ti = image[r0:r0 + tile, c0:c0 + tile]
            tm = mask[r0:r0 + tile, c0:c0 + tile]
            k = int(rng.integers(4))
            ti, tm = np.rot90(ti, k), np.rot90(tm, k)
            if rng.random() < 0.5:
                ti, tm = ti[:, ::-1], tm[:, ::-1]
            if rng.random() < 0.5:
                ti, tm = ti[::-1], tm[::-1]
            imgs.append(np.ascontiguousarray(ti))
            masks.append(np.ascontiguousarray(tm))
    order = rng.permutation(len(imgs))
    return np.stack(imgs)[order], np.stack(masks)[order]


@torch.no_grad()
def predict_logits(model: nn.Module, image: np.ndarray, tile: int, device: torch.device | str = "cpu"
                   ) -> np.ndarray:
    """Logits (H, W) of a whole image: overlapping windows of 4*tile, only each window's centre is kept.

    The margin of tile/2 discards the border of each window, where a convolutional net sees padding instead of
    context; images that fit one window go through in one pass.
    """
    model.eval()
    rows, cols = image.shape[:2]
    window = 4 * round_up(tile, 8)
    if rows <= window and cols <= window:
        padded = _pad_to(image, round_up(rows), round_up(cols), PAD_VALUE)
        out = model(_normalise(padded[None]).to(device))[0, 0].float().cpu().numpy()
        return out[:rows, :cols]
    margin = round_up(tile, 8) // 2
    step = window - 2 * margin
    padded = np.pad(image, [(margin, margin + window), (margin, margin + window), (0, 0)], mode="constant",
                    constant_values=PAD_VALUE)
    logits = np.zeros((rows, cols), dtype=np.float32)
    for r in range(0, rows, step):
        for c in range(0, cols, step):
            win = padded[r:r + window, c:c + window]
            pred = model(_normalise(win[None]).to(device))[0, 0].float().cpu().numpy()
            h, w = min(step, rows - r), min(step, cols - c)
            logits[r:r + h, c:c + w] = pred[margin:margin + h, margin:margin + w]
    return logits


def predict_prob(model: nn.Module, image: np.ndarray, tile: int, device: torch.device | str = "cpu"
                 ) -> np.ndarray:
    """Lesion probability (H, W) float32 in [0, 1]."""
    return 1.0 / (1.0 + np.exp(-predict_logits(model, image, tile, device)))


def evaluate(model: nn.Module, samples: list[SegSample], tile: int, threshold: float,
             device: torch.device | str = "cpu") -> tuple[float, float]:
    """(mean per-slide BCE + Dice, pixel IoU pooled over all slides at `threshold`) on annotated slides.

    Pooled IoU so that slides without lesion count through their false positives; with no lesion and no
    prediction anywhere the IoU is 1 (nothing to find, nothing wrongly found).
    """
    losses, inter, union = [], 0, 0
    for s in samples:
        assert s.mask is not None
        logits = predict_logits(model, s.image, tile, device)
        target = s.mask.astype(np.float32)
        losses.append(float(bce_dice_loss(torch.from_numpy(logits), torch.from_numpy(target))))
        pred = 1.0 / (1.0 + np.exp(-logits)) >= threshold
        inter += int(np.logical_and(pred, s.mask).sum())
        union += int(np.logical_or(pred, s.mask).sum())
    iou = inter / union if union else 1.0
    return float(np.mean(losses)), float(iou)


# ------------------------------------------------------------------------------------------------ training
def train_unetpp(train: list[SegSample], val: list[SegSample], cfg: dict[str, Any], model_out: str | Path,
                 history_out: str | Path, *, seed: int = 0, fold: int = 0, device: torch.device | str = "cpu"
                 ) -> pd.DataFrame:
    """Train on `train` tiles, score `val` every epoch, keep the best model by validation IoU.

    `cfg` is the config's `lesion` section (encoder, encoder_weights, tile_px, epochs, batch_size, lr,
    prob_threshold, seg_mpp). Writes `model_out` (state dict + metadata, atomically) and `history_out`
    (epoch, train_loss, val_loss, val_iou). Without validation masks the best model is the lowest train loss.
    """
    train = [s for s in train if s.mask is not None]
    val = [s for s in val if s.mask is not None]
    if not train or not any(bool(s.mask.any()) for s in train):
        raise NoLesionError(
            f"fold {fold}: the {len(train)} annotated training slide(s) contain no lesion pixel, so the lesion "
            "segmenter cannot learn; annotate lesions on more slides, or use fewer folds so each training set "
            "holds lesions"
        )
    tile = round_up(int(cfg.get("tile_px", 128)))
    threshold = float(cfg.get("prob_threshold", 0.5))
    torch.manual_seed(seed)
    rng = np.random.default_rng([seed, fold])
    model = build_model(cfg.get("encoder", "resnet18"), cfg.get("encoder_weights"),
                        encoder_depth=int(cfg.get("encoder_depth", 5)),
                        decoder_channels=cfg.get("decoder_channels")).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=float(cfg.get("lr", 1e-3)))
    batch = int(cfg.get("batch_size", 8))
    epochs = int(cfg.get("epochs", 10))

    history, best = [], -math.inf
    for epoch in tqdm(range(1, epochs + 1), desc=f"U-Net++ fold {fold}", mininterval=5):
        model.train()
        imgs, masks = sample_tiles(train, tile, rng)
        total, seen = 0.0, 0
        for i in range(0, len(imgs), batch):
            x = _normalise(imgs[i:i + batch]).to(device)
            y = torch.from_numpy(masks[i:i + batch].astype(np.float32))[:, None].to(device)
            if len(x) == 1 and any(isinstance(m, nn.BatchNorm2d) for m in model.modules()):
                continue  # BatchNorm cannot train on a single tile; it is one random crop, skip it
            loss = bce_dice_loss(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(x)
            seen += len(x)
        train_loss = total / max(seen, 1)
        val_loss, val_iou = evaluate(model, val, tile, threshold, device) if val else (math.nan, math.nan)
        history.append((epoch, train_loss, val_loss, val_iou))
        log.info("fold %d epoch %d: train_loss %.4f val_loss %.4f val_iou %.4f", fold, epoch, train_loss,
                 val_loss, val_iou)
        score = val_iou if val else -train_loss
        if score > best:
            best = score
            _save(model, model_out, cfg, tile, fold, epoch, val_iou)
    if not val:
        log.warning("fold %d: no annotated validation slide; the kept model is the one with the lowest train loss",
                    fold)
    frame = pd.DataFrame(history, columns=HISTORY_COLUMNS)
    write_tsv(history_out, frame, float_format="%.6f")
    return frame


def _save(model: nn.Module, path: str | Path, cfg: dict[str, Any], tile: int, fold: int, epoch: int,
          val_iou: float) -> None:
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    ckpt = {"state_dict": state, "encoder": cfg.get("encoder", "resnet18"), "tile_px": tile,
            "encoder_depth": int(cfg.get("encoder_depth", 5)), "decoder_channels": cfg.get("decoder_channels"),
            "seg_mpp": float(cfg.get("seg_mpp", 8.0)), "prob_threshold": float(cfg.get("prob_threshold", 0.5)),
            "fold": fold, "epoch": epoch, "val_iou": val_iou}
    with atomic_path(path) as tmp:
        torch.save(ckpt, tmp)


# ------------------------------------------------------------------------------------------ slides -> arrays
def slide_image(row: Any, seg_mpp: float) -> np.ndarray:
    """The whole slide at `seg_mpp`, on exactly the annotation/tissue grid."""
    from msamil.slides.slide import Slide

    mpp = float(row.mpp)
    with Slide.open(row.path, str(row.slide), override_mpp=mpp) as slide:
        image = slide.image_at_mpp(seg_mpp)
    rows, cols = mask_shape(int(row.width), int(row.height), mpp, seg_mpp)
    if image.shape[:2] != (rows, cols):
        image = cv2.resize(image, (cols, rows), interpolation=cv2.INTER_AREA)
    return np.ascontiguousarray(image[..., :3])


def load_samples(slides: pd.DataFrame, seg_mpp: float, with_masks: bool = True) -> list[SegSample]:
    """Read slides (rows of slides.tsv) at `seg_mpp`; with `with_masks`, only annotated slides, with masks."""
    out = []
    for row in tqdm(list(slides.itertuples(index=False)), desc="read slides", mininterval=5):
        if with_masks and not has_annotation(row.annotation):
            continue
        mask = None
        if with_masks:
            mask = lesion_mask(row.annotation, int(row.width), int(row.height), float(row.mpp), seg_mpp,
                               str(row.slide))
        out.append(SegSample(str(row.slide), slide_image(row, seg_mpp), mask))
    return out


def read_slides_table(path: str | Path) -> pd.DataFrame:
    return pd.read_csv(path, sep="\t", dtype={"slide": str, "patient": str, "label": str, "annotation": str},
                       keep_default_na=False, na_values={"mpp": [""]})


def run_lesion_train(slides_tsv: str, folds_tsv: str, fold: int, cfg: dict[str, Any], model_out: str,
                     history_out: str, *, seed: int = 0, device: str = "auto", threads: int = 1,
                     resources: dict[str, Any] | None = None) -> pd.DataFrame:
    """Rule entry point: the fold's train slides (annotated ones) train, its val slides validate."""
    from msamil.models.backbone import select_device

    torch.set_num_threads(max(1, threads))
    slides = read_slides_table(slides_tsv)
    folds = pd.read_csv(folds_tsv, sep="\t", dtype={"slide": str})
    split = folds[folds["fold"] == int(fold)].set_index("slide")["split"]
    if split.empty:
        raise ConfigError(f"fold {fold} is not in {folds_tsv}; rerun the splits rule")
    slides = slides[slides["slide"].isin(split.index)]
    parts = {}
    for name in ("train", "val"):
        subset = slides[slides["slide"].map(split) == name]
        annotated = subset["annotation"].map(has_annotation)
        log.info("fold %s %s: %d slides, %d annotated, %d without annotation skipped", fold, name, len(subset),
                 int(annotated.sum()), int((~annotated).sum()))
        parts[name] = load_samples(subset[annotated], float(cfg["seg_mpp"]))
    dev = select_device(device, resources)
    return train_unetpp(parts["train"], parts["val"], cfg, model_out, history_out, seed=seed + int(fold),
                        fold=int(fold), device=dev)


def run_lesion_infer(slides_tsv: str, model_path: str, out_h5: str, *, device: str = "auto", threads: int = 1,
                     resources: dict[str, Any] | None = None) -> dict[str, float]:
    """Rule entry point: a uint8 probability map (prob * 255) per usable slide; returns seconds per slide."""
    import h5py

    from msamil.models.backbone import select_device

    torch.set_num_threads(max(1, threads))
    dev = select_device(device, resources)
    model, meta = load_model(model_path, dev)
    seg_mpp, tile = float(meta["seg_mpp"]), int(meta["tile_px"])
    slides = read_slides_table(slides_tsv)
    times = {}
    with atomic_path(out_h5) as tmp, h5py.File(tmp, "w") as h5:
        h5.attrs.update({"seg_mpp": seg_mpp, "fold": int(meta.get("fold", -1)), "model_epoch": meta["epoch"]})
        for row in tqdm(list(slides.itertuples(index=False)), desc="lesion maps", mininterval=5):
            start = time.perf_counter()
            prob = predict_prob(model, slide_image(row, seg_mpp), tile, dev)
            ds = h5.create_dataset(str(row.slide), data=np.round(prob * 255).astype(np.uint8),
                                   compression="gzip", compression_opts=4)
            ds.attrs.update({"mpp": seg_mpp, "slide_mpp": float(row.mpp), "width": int(row.width),
                             "height": int(row.height)})
            times[str(row.slide)] = time.perf_counter() - start
        h5.attrs["complete"] = True
    log.info("%d probability maps, %.2f s per slide on %s", len(times), float(np.mean(list(times.values()) or [0])),
             dev)
    return times
