"""Batched, per-sample histology augmentations in plain torch (runs on the GPU next to the model).

Every sample gets its own random resized crop, flips and 90-degree rotation in one `affine_grid`/`grid_sample`
call (tissue has no canonical orientation), then mild brightness/contrast/saturation jitter. Hue is left alone:
stain colours carry meaning and hue jitter makes non-physical tissue.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from msamil.models.backbone import IMAGENET_MEAN, IMAGENET_STD


def to_unit(imgs: np.ndarray | torch.Tensor, input_px: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """uint8 (N, P, P, 3) -> float (N, 3, input_px, input_px) in [0, 1] (antialiased resize, like to_input)."""
    x = torch.as_tensor(imgs).to(device).permute(0, 3, 1, 2).float().div_(255.0)
    if x.shape[-1] != input_px or x.shape[-2] != input_px:
        x = F.interpolate(x, size=(input_px, input_px), mode="bilinear", antialias=True, align_corners=False)
    return x


def normalize(x: torch.Tensor) -> torch.Tensor:
    """ImageNet mean/std, the same normalisation feature extraction uses (msamil.models.backbone.to_input)."""
    mean = torch.tensor(IMAGENET_MEAN, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    return (x - mean) / std


def random_geometry(x: torch.Tensor, out_px: int, scale: Sequence[float], generator: torch.Generator,
                    ratio: Sequence[float] = (3 / 4, 4 / 3), rotate: bool = True) -> torch.Tensor:
    """Per-sample RandomResizedCrop (area fraction in `scale`) + h/v flips + k*90 degree rotation."""
    n = x.shape[0]
    dev = x.device

    def uniform(lo: float, hi: float) -> torch.Tensor:
        return lo + (hi - lo) * torch.rand(n, generator=generator)

    area = uniform(float(scale[0]), float(scale[1]))
    log_r = uniform(math.log(ratio[0]), math.log(ratio[1]))
    aspect = torch.exp(log_r)
    sw = torch.sqrt(area * aspect).clamp(max=1.0)  # half-extent of the crop in normalised coords (1 = full)
    sh = torch.sqrt(area / aspect).clamp(max=1.0)
    cx = (1 - sw) * (2 * torch.rand(n, generator=generator) - 1)
    cy = (1 - sh) * (2 * torch.rand(n, generator=generator) - 1)
    fx = torch.where(torch.rand(n, generator=generator) < 0.5, -1.0, 1.0)
    fy = torch.where(torch.rand(n, generator=generator) < 0.5, -1.0, 1.0)
    k = torch.randint(0, 4 if rotate else 1, (n,), generator=generator)
    cos = torch.tensor([1.0, 0.0, -1.0, 0.0])[k]
    sin = torch.tensor([0.0, 1.0, 0.0, -1.0])[k]
    # input = diag(sw, sh) @ R(k) @ diag(fx, fy) @ output + (cx, cy)
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0] = sw * cos * fx
    theta[:, 0, 1] = -sw * sin * fy
    theta[:, 1, 0] = sh * sin * fx
    theta[:, 1, 1] = sh * cos * fy
    theta[:, 0, 2] = cx
    theta[:, 1, 2] = cy
    grid = F.affine_grid(theta.to(dev, x.dtype), [n, x.shape[1], out_px, out_px], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


def colour_jitter(x: torch.Tensor, strength: float, generator: torch.Generator, p: float = 0.8) -> torch.Tensor:
    """Mild per-sample brightness, contrast and saturation jitter (factors in 1 +- strength), with probability p."""
    if strength <= 0:
        return x
    n = x.shape[0]

    def factor() -> torch.Tensor:
        f = 1 + strength * (2 * torch.rand(n, generator=generator) - 1)
        keep = torch.rand(n, generator=generator) >= p
        return torch.where(keep, torch.ones(n), f).to(x.device, x.dtype).view(n, 1, 1, 1)

    weights = torch.tensor([0.299, 0.587, 0.114], device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    x = x * factor()
    gray_mean = (x * weights).sum(1, keepdim=True).mean(dim=(-2, -1), keepdim=True)
    x = (x - gray_mean) * factor() + gray_mean
    gray = (x * weights).sum(1, keepdim=True)
    x = (x - gray) * factor() + gray
    return x.clamp_(0.0, 1.0)


def augment(x: torch.Tensor, out_px: int, scale: Sequence[float], generator: torch.Generator,
            jitter: float = 0.0) -> torch.Tensor:
    """[0, 1] images -> one normalised augmented view (crop, flips, rotation, optional colour jitter)."""
    return normalize(colour_jitter(random_geometry(x, out_px, scale, generator), jitter, generator))
