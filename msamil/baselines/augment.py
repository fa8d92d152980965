"""Batched, per-sample augmentations in plain torch (runs on the GPU next to the model).

Every sample gets its own random resized crop, flips and 90-degree rotation in one `affine_grid`/`grid_sample`
call (tissue has no canonical orientation). DINO's photometric set (Caron et al. 2021, reference/baselines.md
section 2.1) follows: colour jitter (brightness, contrast, saturation, hue) with p = 0.8, grayscale, Gaussian
blur and solarisation, each applied per sample with its probability. `DINO_VIEWS` fixes which view gets which
probability: blur 1.0 on global crop 1, 0.1 on global crop 2 (plus solarisation 0.2), 0.5 on local crops.
Blur sigmas are given for a 224 px view and scaled to the view's size, so a small demo view is blurred as much,
relative to its content, as DINO blurs a 224 px crop. Hue is a YIQ chroma rotation (an approximation of HSV hue),
kept small in our configs because stain colours carry meaning.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

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


def _coin(n: int, p: float, generator: torch.Generator) -> torch.Tensor:
    """Per-sample Bernoulli(p) mask (CPU bool tensor)."""
    return torch.rand(n, generator=generator) < p


def colour_jitter(x: torch.Tensor, strength: float | Sequence[float], generator: torch.Generator,
                  p: float = 0.8) -> torch.Tensor:
    """Per-sample brightness, contrast, saturation (factors in 1 +- s) and hue (rotation by +- h turns) jitter,
    all four applied together with probability p (torchvision's RandomApply(ColorJitter)).

    `strength` is (brightness, contrast, saturation, hue) or one number s, meaning (s, s, s, 0).
    """
    b, c, s, h = (float(strength),) * 3 + (0.0,) if isinstance(strength, int | float) else map(float, strength)
    if max(b, c, s, h) <= 0:
        return x
    n = x.shape[0]
    apply = _coin(n, p, generator)
    original = x

    def factor(k: float) -> torch.Tensor:
        f = 1 + k * (2 * torch.rand(n, generator=generator) - 1)
        return torch.where(apply, f, torch.ones(n)).to(x.device, x.dtype).view(n, 1, 1, 1)

    weights = torch.tensor([0.299, 0.587, 0.114], device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    x = (x * factor(b)).clamp(0.0, 1.0)
    gray_mean = (x * weights).sum(1, keepdim=True).mean(dim=(-2, -1), keepdim=True)
    x = ((x - gray_mean) * factor(c) + gray_mean).clamp(0.0, 1.0)
    gray = (x * weights).sum(1, keepdim=True)
    x = ((x - gray) * factor(s) + gray).clamp(0.0, 1.0)
    if h > 0:
        turns = torch.where(apply, h * (2 * torch.rand(n, generator=generator) - 1), torch.zeros(n))
        x = hue_rotate(x, turns.to(x.device, x.dtype))
    return torch.where(apply.to(x.device).view(n, 1, 1, 1), x, original)  # untouched samples stay bit-exact


_RGB2YIQ = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])


def hue_rotate(x: torch.Tensor, turns: torch.Tensor) -> torch.Tensor:
    """Rotate each sample's chroma (I, Q of YIQ) by `turns` (N,) full turns; luminance is unchanged."""
    m = _RGB2YIQ.to(x.device, x.dtype)
    yiq = torch.einsum("ij,njhw->nihw", m, x)
    ang = 2 * math.pi * turns
    cos, sin = torch.cos(ang).view(-1, 1, 1), torch.sin(ang).view(-1, 1, 1)
    i, q = yiq[:, 1], yiq[:, 2]
    yiq = torch.stack([yiq[:, 0], cos * i - sin * q, sin * i + cos * q], dim=1)
    return torch.einsum("ij,njhw->nihw", torch.linalg.inv(m), yiq).clamp(0.0, 1.0)


def grayscale(x: torch.Tensor, p: float, generator: torch.Generator) -> torch.Tensor:
    """With probability p per sample, replace RGB by its luminance (three equal channels)."""
    apply = _coin(x.shape[0], p, generator).to(x.device).view(-1, 1, 1, 1)
    weights = torch.tensor([0.299, 0.587, 0.114], device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    return torch.where(apply, (x * weights).sum(1, keepdim=True).expand_as(x), x)


def gaussian_blur(x: torch.Tensor, p: float, generator: torch.Generator,
                  sigma: Sequence[float] = (0.1, 2.0), ref_px: int = 224) -> torch.Tensor:
    """With probability p per sample, a Gaussian blur with sigma ~ U(sigma) px of a `ref_px` view, scaled to x."""
    n, _, height, width = x.shape
    apply = _coin(n, p, generator)
    scale = width / float(ref_px)
    sig = (float(sigma[0]) + (float(sigma[1]) - float(sigma[0])) * torch.rand(n, generator=generator)) * scale
    if not apply.any():
        return x
    radius = max(1, math.ceil(3 * float(sig.max())))
    radius = min(radius, (min(height, width) - 1) // 2) or 1
    t = torch.arange(-radius, radius + 1, dtype=torch.float32)
    kern = torch.exp(-0.5 * (t.view(1, -1) / sig.clamp_min(1e-3).view(-1, 1)) ** 2)
    kern = (kern / kern.sum(1, keepdim=True)).to(x.device, x.dtype)
    c = x.shape[1]
    w = kern.repeat_interleave(c, dim=0)  # (n*c, K): one kernel per sample and channel
    flat = x.reshape(1, n * c, height, width)
    flat = F.conv2d(F.pad(flat, (radius, radius, 0, 0), mode="reflect"), w.view(n * c, 1, 1, -1), groups=n * c)
    flat = F.conv2d(F.pad(flat, (0, 0, radius, radius), mode="reflect"), w.view(n * c, 1, -1, 1), groups=n * c)
    return torch.where(apply.to(x.device).view(-1, 1, 1, 1), flat.view_as(x), x)


def solarize(x: torch.Tensor, p: float, generator: torch.Generator, threshold: float = 0.5) -> torch.Tensor:
    """With probability p per sample, invert every value >= threshold (PIL's solarize at 128)."""
    apply = _coin(x.shape[0], p, generator).to(x.device).view(-1, 1, 1, 1)
    return torch.where(apply & (x >= threshold), 1.0 - x, x)


@dataclass(frozen=True)
class ViewSpec:
    """Probabilities of DINO's photometric augmentations for one kind of view."""

    blur: float
    solarize: float = 0.0
    jitter: float = 0.8
    grayscale: float = 0.2


# DINO's DataAugmentationDINO: global crop 1, global crop 2, every local crop.
DINO_VIEWS = {"global1": ViewSpec(blur=1.0), "global2": ViewSpec(blur=0.1, solarize=0.2), "local": ViewSpec(blur=0.5)}


def dino_view(x: torch.Tensor, out_px: int, scale: Sequence[float], spec: ViewSpec, generator: torch.Generator,
              cfg: dict[str, Any]) -> torch.Tensor:
    """[0, 1] images -> one normalised DINO view: crop/flip/rotate, jitter, grayscale, blur, solarise.

    `cfg` holds `colour_jitter` (brightness/contrast strength; saturation gets half, as DINO's 0.4/0.4/0.2),
    `hue_jitter` and `blur_sigma`; the probabilities are the spec's.
    """
    s = float(cfg.get("colour_jitter", 0.4))
    x = random_geometry(x, out_px, scale, generator)
    x = colour_jitter(x, (s, s, s / 2, float(cfg.get("hue_jitter", 0.0))), generator, p=spec.jitter)
    x = grayscale(x, spec.grayscale, generator)
    x = gaussian_blur(x, spec.blur, generator, cfg.get("blur_sigma", (0.1, 2.0)))
    if spec.solarize > 0:
        x = solarize(x, spec.solarize, generator)
    return normalize(x)

