"""Frozen-backbone features of every tissue 20x patch of a slide: the first stage of the two-stage baselines.

The backbone is `msamil.models.backbone.create_backbone` with the fold's shared "backbone" seed, i.e. the very
initialisation MsaMIL-Net starts from, its BatchNorm statistics calibrated on the fold's training slides
(msamil.models.batchnorm) by the caller, and its feature map is global-average-pooled. Features depend on the
fold, so they are computed inside each baseline run (msamil.baselines.run) and kept in memory.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from msamil.cache.access import open_cache
from msamil.models.backbone import autocast, to_input

log = logging.getLogger(__name__)

SCALE = "20x"


@dataclass
class SlideFeatures:
    """One slide's patch embeddings with the level-0 coordinates of the patches they came from."""

    features: np.ndarray  # (N, C) float32
    coords: np.ndarray  # (N, 2) int64, level-0 top-left (x, y)
    patch_size_level0: int = 0


@dataclass
class Throughput:
    """Wall time and patch count of one phase, for efficiency.json."""

    patches: int = 0
    wall_s: float = 0.0

    def add(self, patches: int, wall_s: float) -> None:
        self.patches += int(patches)
        self.wall_s += float(wall_s)

    def as_dict(self) -> dict[str, float]:
        rate = self.patches / self.wall_s if self.wall_s > 0 else float("nan")
        return {"patches": self.patches, "wall_s": round(self.wall_s, 3), "patches_per_s": round(rate, 2)}


def pool_features(out: torch.Tensor, n_prefix: int = 0) -> torch.Tensor:
    """One vector per patch from a backbone output: a CNN map (B, C, h, w) is average-pooled; ViT tokens (B, T, C)
    give their CLS token when the model has prefix tokens (what UNI-style foundation models are read out by),
    else the mean of the patch tokens."""
    if out.ndim == 4:
        return out.mean(dim=(-2, -1))
    if out.ndim == 3:
        return out[:, 0] if n_prefix > 0 else out.mean(dim=1)
    return out


class PooledBackbone(nn.Module):
    """backbone + global average pooling, so DINO and ICMIL train exactly the embedder that ABMIL consumes."""

    def __init__(self, backbone: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone
        self.num_features = int(getattr(backbone, "num_features", 0))
        self.n_prefix = int(getattr(backbone, "num_prefix_tokens", 0) or 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return pool_features(self.backbone(x), self.n_prefix)


@torch.no_grad()
def embed_images(embedder: nn.Module, imgs: np.ndarray, *, input_px: int,
                 device: torch.device | str = "cpu") -> np.ndarray:
    """uint8 patches (n, P, P, 3) -> pooled float32 embeddings (n, C); eval mode, no gradients."""
    device = torch.device(device)
    embedder.eval()
    with autocast(device):
        out = pool_features(embedder(to_input(imgs, input_px, device)))
    return out.float().cpu().numpy()


def _patch_size_level0(cache_path: str | Path) -> int:
    with open_cache(cache_path) as f:
        return int(f[SCALE].attrs.get("patch_size_level0", 0))


def iter_slide_chunks(cache_path: str | Path, chunk: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(imgs, coords) in chunks over all tissue 20x patches of a cached slide, in cache order."""
    from msamil.cache.bags import BagReader

    reader = BagReader(cache_path, scales=[SCALE])
    for bag in reader.chunks(chunk):
        yield bag.imgs, bag.coords
    close = getattr(reader, "close", None)
    if callable(close):
        close()


def extract_slide(embedder: nn.Module, cache_path: str | Path, *, input_px: int, chunk: int = 64,
                  device: torch.device | str = "cpu", throughput: Throughput | None = None) -> SlideFeatures:
    """Embed every tissue 20x patch of one slide, chunk by chunk so memory stays bounded by `chunk`."""
    device = torch.device(device)
    feats, coords = [], []
    start = time.perf_counter()
    n = 0
    for imgs, xy in iter_slide_chunks(cache_path, chunk):
        feats.append(embed_images(embedder, imgs, input_px=input_px, device=device))
        coords.append(np.asarray(xy, dtype=np.int64))
        n += len(imgs)
    if device.type == "cuda":
        torch.cuda.synchronize()
    if throughput is not None:
        throughput.add(n, time.perf_counter() - start)
    dim = int(getattr(embedder, "num_features", 0))
    return SlideFeatures(
        features=np.concatenate(feats).astype(np.float32) if feats else np.zeros((0, dim), np.float32),
        coords=np.concatenate(coords) if coords else np.zeros((0, 2), np.int64),
        patch_size_level0=_patch_size_level0(cache_path),
    )


def extract_slides(embedder: nn.Module, cache_paths: Mapping[str, str | Path], *, input_px: int,
                   chunk: int = 64, device: torch.device | str = "cpu",
                   throughput: Throughput | None = None) -> dict[str, SlideFeatures]:
    """Features of several slides (in memory), with a progress bar over slides."""
    out = {}
    for slide, path in tqdm(cache_paths.items(), desc="features", unit="slide"):
        out[slide] = extract_slide(embedder, path, input_px=input_px, chunk=chunk, device=device,
                                   throughput=throughput)
    return out
