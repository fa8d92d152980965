"""Random 20x patches from a fixed set of slides, for DINO pretraining and ICMIL fine-tuning.

The sampler is built from the fold's *training* slides only and records every slide it ever drew from (`seen`), so
the run can write an audit of what each phase saw and tests can assert that no validation or test slide leaked in.
Patches are drawn uniformly over patches (a slide is picked with probability proportional to its patch count),
as the reference ICMIL code does over its pooled tile list.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from msamil.cache.access import open_cache

SCALE = "20x"


def count_patches(cache_path: str | Path, scale: str = SCALE) -> int:
    """Number of cached tissue patches of one scale, read from the coordinates only (cheap)."""
    with open_cache(cache_path) as f:
        return int(f[scale]["coords"].shape[0]) if scale in f else 0


class PatchSampler:
    """Draw batches of uint8 patches (n, P, P, 3) from the given slides, remembering which slides were used."""

    def __init__(self, cache_paths: Mapping[str, str | Path], seed: int = 0) -> None:
        self.paths = {s: Path(p) for s, p in cache_paths.items()}
        counts = {s: count_patches(p) for s, p in self.paths.items()}
        self.slides = [s for s, n in counts.items() if n > 0]
        if not self.slides:
            raise ValueError(f"no 20x patches in any of the {len(self.paths)} slides given to the sampler")
        self.counts = np.array([counts[s] for s in self.slides], dtype=np.int64)
        self.rng = np.random.default_rng(seed)
        self.seen: set[str] = set()
        self._readers: dict[str, Any] = {}

    @property
    def n_patches(self) -> int:
        return int(self.counts.sum())

    def _reader(self, slide: str) -> Any:
        if slide not in self._readers:
            from msamil.cache.bags import BagReader

            self._readers[slide] = BagReader(self.paths[slide], scales=[SCALE])
        return self._readers[slide]

    def batch(self, n: int) -> tuple[np.ndarray, list[str]]:
        """n patches drawn uniformly over all patches of the sampler's slides, and the slide of each patch."""
        per_slide = self.rng.multinomial(n, self.counts / self.counts.sum())
        imgs, owners = [], []
        for i in np.flatnonzero(per_slide):
            slide = self.slides[i]
            k = int(per_slide[i])
            while k > 0:  # a slide with fewer patches than requested is drawn again (with replacement)
                take = min(k, int(self.counts[i]))
                bag = self._reader(slide).sample(take, self.rng)
                imgs.append(np.asarray(bag.imgs))
                owners += [slide] * len(bag.imgs)
                k -= take
            self.seen.add(slide)
        order = self.rng.permutation(len(owners))
        return np.concatenate(imgs)[order], [owners[j] for j in order]

    def close(self) -> None:
        for reader in self._readers.values():
            close = getattr(reader, "close", None)
            if callable(close):
                close()
        self._readers.clear()
