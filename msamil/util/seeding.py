"""One seeding function for every method: named random streams per (seed, fold).

MsaMIL-Net, its ablations and the three baselines of one fold draw their backbone initialisation, model
initialisation, data order, augmentations and BatchNorm calibration from the streams named here. So in a fold
every method starts from bit-identical backbone weights (stream "backbone"), and no two folds or seeds share a
stream (the old scheme seeded MsaMIL-Net with seed*1000+fold and the baselines with the bare seed).
"""

from __future__ import annotations

import hashlib
import random

import numpy as np

STREAMS = ("backbone", "model", "data", "augment", "bn_calib", "head", "infer")


def stream_seed(seed: int, fold: int, stream: str) -> int:
    """A 63-bit seed for stream `stream` of run (seed, fold); stable across Python versions and platforms.

    `stream` is one of STREAMS, optionally followed by "/" and a qualifier (e.g. "infer/syn_007").
    """
    if stream.split("/", 1)[0] not in STREAMS:
        raise ValueError(f"unknown random stream {stream!r}; known: {STREAMS}")
    blob = f"msamil:{int(seed)}:{int(fold)}:{stream}".encode()
    return int.from_bytes(hashlib.sha256(blob).digest()[:8], "little") >> 1


def rng(seed: int, fold: int, stream: str) -> np.random.Generator:
    """A numpy generator on one stream."""
    return np.random.default_rng(stream_seed(seed, fold, stream))


def seed_everything(seed: int, fold: int) -> int:
    """Seed Python's, numpy's legacy and torch's global generators from the "model" stream; return that seed.

    Everything that still draws from a global generator (module initialisation outside the backbone, dropout)
    is then a function of (seed, fold) only, whichever method runs.
    """
    import torch

    value = stream_seed(seed, fold, "model")
    random.seed(value)
    np.random.seed(value % 2**32)
    torch.manual_seed(value)
    return value
