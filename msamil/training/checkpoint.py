"""Training checkpoints: atomic torch saves and the RNG states an exact resume needs.

`last.pt` holds everything (model, optimizer, scheduler, python/numpy/torch RNG, counters); `best.pt` only the
model and how it scored. Both are written to a temporary file and renamed, so a kill never leaves half a file.
"""

from __future__ import annotations

import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from msamil.util.atomic import atomic_path


def rng_state(rng: np.random.Generator) -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": rng.bit_generator.state, "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any], rng: np.random.Generator) -> None:
    random.setstate(state["python"])
    rng.bit_generator.state = state["numpy"]
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save(path: str | os.PathLike[str], obj: dict[str, Any]) -> None:
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def load(path: str | os.PathLike[str]) -> dict[str, Any]:
    # weights_only=False: the file is our own and holds python RNG tuples and numpy state dicts.
    return torch.load(Path(path), map_location="cpu", weights_only=False)


def mirror(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
    """Make `dst` a hard link to `src` (a copy where links are impossible), atomically.

    Why: Snakemake deletes a job's declared outputs (last.pt) before rerunning it and after it fails; the mirror
    outside the outputs survives, so a killed training job resumes instead of starting over.
    """
    dst = Path(dst)
    with atomic_path(dst) as tmp:
        tmp.unlink()
        try:
            os.link(src, tmp)
        except OSError:
            shutil.copy2(src, tmp)
