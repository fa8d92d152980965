"""Which level-0 tiles inspection decodes to catch a corrupt tile before the cache stage does.

OpenSlide decodes a tile only when it is read. A slide with one corrupt level-0 JPEG tile opens, thumbnails and
tissue-detects fine (those read coarse levels), then fails when the cache reads that tile. Decoding every level-0
tile at inspection would cost as much as building the cache, so inspection decodes a sample: every tile when there
are few (the demo's slides), else a fixed-seed sample, drawn from the tiles that hold tissue when a tissue mask is
known (only those are ever cached). Corruption from a bad copy or a failing disk usually spans many tiles, so most
such slides are caught here; a slide that still fails later is excluded at that stage.
"""

from __future__ import annotations

import math

import numpy as np

VERIFY_TILES = 64  # level-0 tiles decoded per call (a 256 px JPEG tile decodes in about a millisecond)
SEED = 0  # fixed, so the sample is reproducible (tests pick a tile the sample misses to reach later stages)


def level0_tiles(width: int, height: int, tile_w: int, tile_h: int, tissue: np.ndarray | None = None,
                 level0_per_mask_px: float | None = None, max_tiles: int = VERIFY_TILES) -> np.ndarray:
    """Level-0 top-left (x, y) of the tiles to decode, int64 (k, 2), sorted row-major.

    `tissue` is a boolean mask whose pixel covers `level0_per_mask_px` level-0 pixels; a tile is a candidate when
    any tissue pixel centre falls inside it. Without a mask every tile is a candidate.
    """
    nx, ny = math.ceil(width / tile_w), math.ceil(height / tile_h)
    if tissue is None:
        cand = np.arange(nx * ny, dtype=np.int64)
    else:
        if level0_per_mask_px is None:
            raise ValueError("level0_per_mask_px is required with a tissue mask")
        ys, xs = np.nonzero(tissue)
        tx = np.clip(((xs + 0.5) * level0_per_mask_px // tile_w).astype(np.int64), 0, nx - 1)
        ty = np.clip(((ys + 0.5) * level0_per_mask_px // tile_h).astype(np.int64), 0, ny - 1)
        cand = np.unique(ty * nx + tx)
    if len(cand) > max_tiles:
        cand = np.sort(np.random.default_rng(SEED).choice(cand, size=max_tiles, replace=False))
    return np.stack([cand % nx * tile_w, cand // nx * tile_h], axis=1).astype(np.int64)
