"""What the trainer feeds on: per-slide bag readers opened on demand, the epoch order and bag augmentation.

Kept free of torch, so the data side of training can be tested and reused without the model.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from msamil.errors import SlideError


class SlideData:
    """Opens one slide's bag reader on demand (nothing held open between steps, so memory stays flat)."""

    def __init__(self, caches: Sequence[str | Path], selection: str | Path | None, scales: Sequence[str],
                 reader_factory: Callable[..., Any] | None = None) -> None:
        self.caches = {Path(p).stem: Path(p) for p in caches}
        self.selection = Path(selection) if selection else None
        self.scales = list(scales)
        if reader_factory is None:
            from msamil.cache.bags import BagReader

            reader_factory = BagReader
        self.factory = reader_factory

    @contextlib.contextmanager
    def open(self, slide: str) -> Iterator[Any]:
        if slide not in self.caches:
            raise SlideError(slide, "no patch cache for this slide", "rerun the cache rule for it")
        indices = None
        if self.selection is not None:
            from msamil.lesion.sffm import load_selection

            kept = load_selection(self.selection, slide)
            # a scale the selection lacks keeps nothing (BagReader reads a missing key as "every patch")
            indices = {s: np.asarray(kept.get(s, []), dtype=np.int64) for s in self.scales}
        reader = self.factory(self.caches[slide], indices, self.scales)
        try:
            yield reader
        finally:
            close = getattr(reader, "close", None)
            if callable(close):
                close()


def class_interleaved_order(labels: Sequence[int], rng: np.random.Generator) -> np.ndarray:
    """A seeded epoch order that cycles through the classes (each class shuffled), so every group of
    `accum_slides` = n_classes consecutive slides holds one slide per class while they last.

    With one slide per forward pass, steps that see a single class push the shared bag direction back and forth
    (the logits swing while their spread across slides stays ~0); mixed steps cancel that bias and leave the
    gradient that separates the classes.
    """
    labels = np.asarray(labels)
    pools = [list(rng.permutation(np.flatnonzero(labels == c))) for c in np.unique(labels)]
    order: list[int] = []
    while any(pools):
        for k in rng.permutation(len(pools)):
            if pools[k]:
                order.append(int(pools[k].pop()))
    return np.asarray(order, dtype=np.int64)


def augment_bag(imgs: np.ndarray, rng: np.random.Generator, colour: float = 0.1) -> np.ndarray:
    """Training augmentation of a bag of uint8 patches (n, P, P, 3): a random dihedral transform per patch (tissue
    has no orientation) and one stain jitter per bag (per-channel optical-density gain in 1 +- `colour`).

    With a few dozen slides, each slide's stain is a fingerprint a model can memorise instead of the morphology
    that decides the label; the jitter takes that shortcut away.
    """
    return apply_augment(imgs, *augment_params(len(imgs), rng, colour))


def augment_params(n: int, rng: np.random.Generator, colour: float = 0.1) -> tuple[np.ndarray, np.ndarray | None]:
    """The random draws of `augment_bag` for a bag of `n` patches, in its order: (dihedral op per patch, stain
    gain or None). Drawn where the bags are planned, applied wherever they are read (msamil.training.loader)."""
    ops = rng.integers(0, 8, n)
    gain = rng.uniform(1 - colour, 1 + colour, 3).astype(np.float32) if colour > 0 else None
    return ops, gain


def apply_augment(imgs: np.ndarray, ops: np.ndarray, gain: np.ndarray | None) -> np.ndarray:
    """Apply drawn augmentation parameters (deterministic: no RNG here)."""
    out = np.empty_like(imgs)
    for k, (img, op) in enumerate(zip(imgs, ops.tolist(), strict=True)):
        img = np.rot90(img, op % 4)
        out[k] = img[:, ::-1] if op >= 4 else img
    if gain is not None:
        od = -np.log((out.astype(np.float32) + 1.0) / 256.0)
        out = np.clip(256.0 * np.exp(-od * gain) - 1.0, 0, 255).round().astype(np.uint8)
    return out
