"""DINO's full augmentation set (reference/baselines.md section 2.1): each photometric operation does what it says
with its probability, and each view applies DINO's probabilities (blur 1.0 / 0.1 + solarise 0.2 / 0.5)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from msamil.baselines.augment import (
    DINO_VIEWS,
    colour_jitter,
    dino_view,
    gaussian_blur,
    grayscale,
    hue_rotate,
    solarize,
)
from msamil.models.backbone import IMAGENET_MEAN, IMAGENET_STD

PX, PERIOD = 32, 4


def pattern(n: int, px: int = PX) -> torch.Tensor:
    """Coloured images (R != G != B) around 0.75 with a fine stripe pattern: blur flattens the stripes, solarising
    drops the mean below 0.5, grayscale makes the channels equal."""
    t = torch.arange(px, dtype=torch.float32)
    stripes = 0.1 * torch.sin(2 * math.pi * (t.view(1, -1) + t.view(-1, 1)) / PERIOD)
    base = torch.tensor([0.85, 0.70, 0.78]).view(1, 3, 1, 1)
    return (base + stripes).expand(n, 3, px, px).clone()


def detail(x: torch.Tensor) -> torch.Tensor:
    """Per-sample high-frequency amplitude: mean |x - 3x3 box-blurred x| of the grey image."""
    g = x.mean(1, keepdim=True)
    box = torch.nn.functional.avg_pool2d(torch.nn.functional.pad(g, (1, 1, 1, 1), mode="reflect"), 3, stride=1)
    return (g - box).abs().mean(dim=(1, 2, 3))


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_blur_p1_blurs_every_sample_p0_none_and_sigma_scales_with_the_view():
    x = pattern(16)
    blurred = gaussian_blur(x, 1.0, gen(), sigma=(10.0, 12.0))  # 1.4-1.7 px at 32 px (scaled from 224 px)
    assert (detail(blurred) < 0.4 * detail(x)).all()
    torch.testing.assert_close(blurred.mean(dim=(1, 2, 3)), x.mean(dim=(1, 2, 3)), atol=2e-3, rtol=0)
    assert torch.equal(gaussian_blur(x, 0.0, gen(), sigma=(10.0, 12.0)), x)
    # sigmas are given for a 224 px view: at 32 px, 1.5 means 0.2 px, which leaves the stripes
    weak = gaussian_blur(x, 1.0, gen(), sigma=(1.5, 1.6))
    assert (detail(weak) > 0.8 * detail(x)).all()


def test_solarize_inverts_bright_values_with_its_probability():
    x = pattern(400)
    out = solarize(x, 1.0, gen())
    torch.testing.assert_close(out, torch.where(x >= 0.5, 1 - x, x))
    assert torch.equal(solarize(x, 0.0, gen()), x)
    hit = (solarize(x, 0.2, gen()).mean(dim=(1, 2, 3)) < 0.5).float().mean().item()
    assert hit == pytest.approx(0.2, abs=0.07)


def test_grayscale_equalises_channels_with_its_probability():
    x = pattern(400)
    out = grayscale(x, 1.0, gen())
    assert torch.allclose(out[:, 0], out[:, 1]) and torch.allclose(out[:, 1], out[:, 2])
    torch.testing.assert_close(out[:, 0], 0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2])
    assert torch.equal(grayscale(x, 0.0, gen()), x)
    out = grayscale(x, 0.2, gen())
    hit = ((out.amax(1) - out.amin(1)).flatten(1).amax(1) < 1e-6).float().mean().item()
    assert hit == pytest.approx(0.2, abs=0.07)


def test_colour_jitter_with_hue_keeps_luminance_and_respects_its_probability():
    x = pattern(8)
    turned = hue_rotate(x, torch.full((8,), 0.1))
    lum = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
    torch.testing.assert_close((turned * lum).sum(1), (x * lum).sum(1), atol=1e-4, rtol=0)
    assert (turned - x).abs().max() > 0.02  # the chroma did turn
    assert torch.equal(colour_jitter(x, (0.4, 0.4, 0.2, 0.1), gen(), p=0.0), x)
    changed = (colour_jitter(pattern(400), (0.4, 0.4, 0.2, 0.1), gen(), p=0.8) - pattern(400)).abs()
    assert changed.flatten(1).amax(1).gt(1e-6).float().mean().item() == pytest.approx(0.8, abs=0.07)


def test_dino_views_use_dinos_probabilities():
    """The real view pipeline (crop/flip/rotate at full scale, no jitter): measured blur, solarisation and
    grayscale rates per view match DINO's (1.0 / 0.1 / 0.5 blur, 0.2 solarise on view 2, 0.2 grayscale)."""
    assert DINO_VIEWS["global1"].blur == 1.0 and DINO_VIEWS["global1"].solarize == 0.0
    assert DINO_VIEWS["global2"].blur == 0.1 and DINO_VIEWS["global2"].solarize == 0.2
    assert DINO_VIEWS["local"].blur == 0.5 and DINO_VIEWS["local"].solarize == 0.0
    n = 400
    x = pattern(n)
    cfg = {"colour_jitter": 0.0, "hue_jitter": 0.0, "blur_sigma": (10.0, 12.0)}
    mean, std = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    reference = detail(x)
    for k, (name, spec) in enumerate(DINO_VIEWS.items()):
        view = dino_view(x, PX, (1.0, 1.0), spec, gen(k), cfg) * std + mean
        solarised = view.mean(dim=(1, 2, 3)) < 0.5
        blurred = detail(view) < 0.5 * reference
        gray = (view.amax(1) - view.amin(1)).flatten(1).amax(1) < 1e-5
        for measured, p in ((blurred, spec.blur), (solarised, spec.solarize), (gray, spec.grayscale)):
            tol = 0.0 if p in (0.0, 1.0) else 3.5 * np.sqrt(p * (1 - p) / n)
            assert measured.float().mean().item() == pytest.approx(p, abs=tol), name
