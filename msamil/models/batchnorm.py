"""One BatchNorm policy for every backbone that embeds patches in eval mode (DESIGN.md section 7).

A backbone's BatchNorm running statistics are re-estimated on patches of the fold's *training* slides before it
embeds anything in eval mode: MsaMIL-Net (before the first step and after every epoch), the frozen-backbone
ablation, ABMIL's frozen features, and the feature re-extraction after DINO and after every ICMIL round. Without
it a random network normalises with mean 0 / variance 1 (its initial statistics), DINO's teacher with statistics
of augmented crops, and part of "end to end beats two-stage" would be BatchNorm calibration alone.

The estimate: `n` patches drawn evenly over the training slides (ceil(n / slides) per slide, shuffled across
slides, so each batch mixes slides and the batch variances include the between-slide spread), pushed through
the backbone in train mode with momentum=None (PyTorch's cumulative average over batches). Only the running
statistics change; the affine weights and everything else stay as they are.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from msamil.models.backbone import autocast

OpenReader = Callable[[str], contextlib.AbstractContextManager[Any]]


def batchnorm_layers(module: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def calibration_patches(open_reader: OpenReader, slides: Sequence[str], n: int,
                        rng: np.random.Generator) -> np.ndarray:
    """uint8 patches (<= n, P, P, 3) drawn evenly over `slides`, shuffled across slides.

    `open_reader(slide)` is a context manager yielding a reader with `.sample(k, rng)` (msamil.cache.bags.BagReader
    or msamil.training.data.SlideData.open), restricted to the patches the method embeds.
    """
    if n <= 0 or not slides:
        return np.zeros((0, 0, 0, 3), np.uint8)
    per_slide = max(1, math.ceil(n / len(slides)))
    imgs = []
    for slide in slides:
        with open_reader(slide) as reader:
            imgs.append(np.asarray(reader.sample(per_slide, rng).imgs))
    pool = np.concatenate(imgs)
    return pool[rng.permutation(len(pool))][:n]


@torch.no_grad()
def estimate_batchnorm(backbone: nn.Module, imgs: np.ndarray, prepare: Callable[[torch.Tensor], torch.Tensor],
                       batch: int, device: torch.device | str = "cpu") -> int:
    """Reset and re-estimate every BatchNorm's running statistics of `backbone` on `imgs`; returns the patches used.

    Each layer's train/eval mode and momentum are restored afterwards, so the caller's mode policy is kept.
    """
    bns = batchnorm_layers(backbone)
    if not bns or len(imgs) == 0:
        return 0
    saved = [(m.momentum, m.training) for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
        m.train()
    try:
        with autocast(device):
            for i in range(0, len(imgs), max(1, int(batch))):
                part = imgs[i:i + max(1, int(batch))]
                if len(part) < 2 and i > 0:
                    continue  # a lone trailing patch: BatchNorm's batch variance over one sample is noise
                backbone(prepare(torch.as_tensor(np.ascontiguousarray(part))))
    finally:
        for m, (momentum, training) in zip(bns, saved, strict=True):
            m.momentum = momentum
            m.train(training)
    return len(imgs)


def calibrate_batchnorm(backbone: nn.Module, slides: Sequence[str], open_reader: OpenReader, n: int,
                        rng: np.random.Generator, prepare: Callable[[torch.Tensor], torch.Tensor], batch: int,
                        device: torch.device | str = "cpu") -> int:
    """The policy in one call: draw `n` training patches (`calibration_patches`) and `estimate_batchnorm` on them.

    n <= 0 leaves the backbone's own statistics (pretrained ones, or those its training accumulated).
    """
    if n <= 0 or not batchnorm_layers(backbone):
        return 0
    return estimate_batchnorm(backbone, calibration_patches(open_reader, slides, n, rng), prepare, batch, device)
