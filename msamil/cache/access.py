"""Opening a slide's cache file: the one place where h5py's failures become an error naming the file and the fix.

A cache truncated after it was built (a full disk, a bad copy, a kill during an rsync) opens with an HDF5 message
that names neither the file nor the slide ("truncated file: eof = ..."), and Snakemake will not rebuild it on its
own because the file exists. Every reader of `cache/{slide}.h5` (bags, SFFM, the baselines, the CLI) opens it here.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import h5py

from msamil.errors import SlideError


class CacheError(SlideError):
    """A per-slide HDF5 file (cache or features) is unreadable or unfinished; the fix is to delete and rebuild."""


def cache_error(path: str | os.PathLike[str], problem: str, slide: str | None = None,
                what: str = "cache", rule: str = "cache") -> CacheError:
    path = Path(path)
    return CacheError(slide or path.stem, f"{what} file {path} is {problem}",
                      f"delete it ({path}) and rerun; the {rule} rule rebuilds it")


def open_cache(path: str | os.PathLike[str], *, slide: str | None = None, require_complete: bool = True,
               what: str = "cache", rule: str = "cache", **h5_kwargs: Any) -> h5py.File:
    """Open a per-slide HDF5 file read-only; CacheError (naming the file and the fix) when it cannot be used.

    `require_complete` checks the `complete` attribute every writer sets last, so a file some other tool cut
    short is refused as well as a truncated one.
    """
    try:
        h5 = h5py.File(path, "r", **h5_kwargs)
    except FileNotFoundError:
        raise cache_error(path, "missing", slide, what, rule) from None
    except OSError as exc:  # truncated, not HDF5 at all, or a damaged superblock
        detail = " ".join(str(exc).split())[:200]
        raise cache_error(path, f"unreadable (truncated or corrupt: {detail})", slide, what, rule) from exc
    if require_complete and not bool(h5.attrs.get("complete", False)):
        h5.close()
        raise cache_error(path, "incomplete (no complete=True attribute: its writer never finished)", slide,
                          what, rule)
    return h5
