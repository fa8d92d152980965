"""Training checkpoints: atomic torch saves, safe loads, and the RNG states an exact resume needs.

`last.pt` holds everything (model, optimizer, scheduler, python/numpy/torch RNG, counters, and the best weights so
far); `best.pt` only the best model and how it scored. Both are written to a temporary file and renamed, so a kill
never leaves half a file.

The resume mirror (`.resume/last.pt`, outside Snakemake's declared outputs, which it deletes before a rerun) is a
real copy of the same bytes, never a hard link: a link shares the damage of the file it mirrors. Its sha256 is
recorded in `.resume/last.pt.sha256` before the earlier ones, so a kill between writing the record and the
copy still leaves a copy that matches. A checkpoint that fails its checksum or will not load is moved aside with a
one-line warning and never stops a run.

Loads use `torch.load(weights_only=True)`: a checkpoint is data (tensors, numbers, strings, lists and dicts; RNG
states are stored as such), so opening someone else's results folder can never run code.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from msamil.errors import MsamilError
from msamil.util.atomic import atomic_path, write_text
from msamil.util.checksum import sha256_file

log = logging.getLogger(__name__)


class CheckpointError(MsamilError):
    """A checkpoint file cannot be trusted: it will not load, or it does not match its recorded checksum."""

    def __init__(self, path: str | os.PathLike[str], reason: str) -> None:
        self.path, self.reason = Path(path), reason
        super().__init__(f"checkpoint {path} is damaged ({reason})")


def rng_state(rng: np.random.Generator) -> dict[str, Any]:
    """Every RNG the training loop draws from, as tensors, lists, numbers and strings (weights_only-loadable)."""
    version, internal, gauss = random.getstate()
    state = {"python": {"version": version, "internal": list(internal), "gauss": gauss},
             "numpy": rng.bit_generator.state, "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = list(torch.cuda.get_rng_state_all())
    return state


def set_rng_state(state: dict[str, Any], rng: np.random.Generator) -> None:
    py = state["python"]
    random.setstate((int(py["version"]), tuple(py["internal"]), py["gauss"]))
    rng.bit_generator.state = state["numpy"]
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _serialise(obj: dict[str, Any]) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def _write_bytes(path: Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def save(path: str | os.PathLike[str], obj: dict[str, Any]) -> None:
    _write_bytes(Path(path), _serialise(obj))


def checksum_path(mirror: str | os.PathLike[str]) -> Path:
    return Path(f"{mirror}.sha256")


def save_with_mirror(path: str | os.PathLike[str], mirror: str | os.PathLike[str], obj: dict[str, Any]) -> None:
    """Write `obj` to `path` and an identical copy to `mirror`, recording the copy's sha256 (and the previous)."""
    data = _serialise(obj)
    digest = hashlib.sha256(data).hexdigest()
    record = checksum_path(mirror)
    previous = record.read_text().split()[:2] if record.exists() else []
    write_text(record, "\n".join([digest, *previous]) + "\n")  # before the copy: a kill in between stays valid
    _write_bytes(Path(mirror), data)
    _write_bytes(Path(path), data)


def load(path: str | os.PathLike[str], checksums: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """A checkpoint as plain data (weights_only=True); CheckpointError when it cannot be trusted.

    `checksums` is a sha256 record (one hex digest per line) the file must match; a missing record fails too.
    """
    path = Path(path)
    if checksums is not None:
        record = Path(checksums)
        if not record.exists():
            raise CheckpointError(path, f"its checksum record {record.name} is missing")
        if sha256_file(path) not in record.read_text().split():
            raise CheckpointError(path, f"sha256 does not match {record.name}")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated zip, foreign pickle, anything: the file is unusable either way
        reason = " ".join(str(exc).split())[:200] or type(exc).__name__
        raise CheckpointError(path, f"{type(exc).__name__}: {reason}") from exc
    if not isinstance(blob, dict):
        raise CheckpointError(path, f"holds a {type(blob).__name__}, not a checkpoint dict")
    return blob


def set_aside(err: CheckpointError) -> Path:
    """Move a damaged checkpoint out of the way (to `<name>.damaged`) with a one-line warning naming both."""
    dest = err.path.with_name(err.path.name + ".damaged")
    os.replace(err.path, dest)
    log.warning("%s; moved to %s and not used", err, dest)
    return dest
