"""Atomic outputs: write next to the target under a temporary name, make it durable, then rename.

A killed job therefore never leaves a file that looks complete; Snakemake sees the output missing and reruns.
Three details make that hold on real machines:

- **Durable.** The temporary file is fsync'ed before the rename and the directory after it, so a power cut or a
  node crash cannot leave a renamed but empty file behind (ext4/xfs may reorder the rename before the data).
- **No litter.** Temporary names are `.<name>.<8 random chars><suffix>`; a job killed with SIGKILL cannot remove
  its own, so the next write of the same target removes any left over (a rerun cleans up after the killed job).
- **Disk full is named.** Libraries report a full disk in their own words (h5py: "file write failed", torch:
  "PytorchStreamWriter failed writing file"); the error raised here says "no space left on device" with the path.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from msamil.errors import MsamilError

log = logging.getLogger(__name__)

_UMASK = os.umask(0)
os.umask(_UMASK)
_RANDOM = r"[a-z0-9_]{8}"  # what tempfile.mkstemp puts between prefix and suffix


class DiskFullError(MsamilError, OSError):
    """No space left on the device that holds an output (also an OSError with errno ENOSPC)."""

    def __init__(self, target: Path, detail: str) -> None:
        msg = (f"no space left on device while writing {target} ({detail}); the partial file was removed. "
               f"Free space on the filesystem holding {target.parent} (or move results/ elsewhere) and rerun")
        MsamilError.__init__(self, msg)
        self.errno = errno.ENOSPC
        self.strerror = "No space left on device"
        self.filename = str(target)

    def __str__(self) -> str:
        return str(self.args[0])


def _suffix(target: Path, suffix: str | None) -> str:
    return suffix if suffix is not None else "".join(target.suffixes) or ".tmp"


def stale_temporaries(target: Path, suffix: str | None = None) -> list[Path]:
    """Temporary files of earlier writes of `target` that never reached the rename (a killed job's leftovers)."""
    pattern = re.compile(re.escape(f".{target.name}.") + _RANDOM + re.escape(_suffix(target, suffix)))
    try:
        names = os.listdir(target.parent)
    except FileNotFoundError:
        return []
    return [target.parent / n for n in names if pattern.fullmatch(n)]


def _no_space(exc: BaseException, directory: Path) -> str | None:
    """Why `exc` means a full disk (errno, a library's message, or a full filesystem), else None."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in (errno.ENOSPC, errno.EDQUOT):
            return os.strerror(seen.errno)
        text = str(seen).lower()
        if "no space left" in text or "errno = 28" in text or "disk quota exceeded" in text:
            return "the filesystem is full"
        seen = seen.__cause__ or seen.__context__
    if isinstance(exc, OSError | RuntimeError):
        with contextlib.suppress(OSError):
            stat = os.statvfs(directory)
            if stat.f_bavail == 0:  # a writer that hid the errno, on a filesystem with nothing left
                return "0 bytes free on the filesystem"
    return None


def _fsync(path: Path, directory: bool = False) -> None:
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if directory else 0))
    try:
        os.fsync(fd)
    except OSError as exc:
        if not directory or exc.errno not in (errno.EINVAL, errno.EBADF):  # some filesystems refuse dir fsync
            raise
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str], suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path in the target's directory; rename it onto `path` only if the block succeeds.

    `suffix` defaults to the target's own suffix so that libraries which sniff the extension (PIL, matplotlib,
    h5py) behave as for the final name. Leftover temporaries of the same target are removed first.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    for stale in stale_temporaries(target, suffix):
        with contextlib.suppress(FileNotFoundError):
            stale.unlink()
            log.info("removed %s, left by an interrupted write of %s", stale, target.name)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=_suffix(target, suffix), dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, 0o666 & ~_UMASK)  # mkstemp makes 0600; outputs should be as readable as plain files
        _fsync(tmp_path)
        os.replace(tmp_path, target)
        _fsync(target.parent, directory=True)
    except BaseException as exc:
        reason = _no_space(exc, target.parent)
        tmp_path.unlink(missing_ok=True)
        if reason is not None and not isinstance(exc, DiskFullError):
            raise DiskFullError(target, reason) from exc
        raise


def write_text(path: str | os.PathLike[str], text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path: str | os.PathLike[str], obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=_jsonable) + "\n")


def write_tsv(path: str | os.PathLike[str], frame: Any, **kwargs: Any) -> None:
    """Write a pandas DataFrame as TSV atomically (index off unless asked)."""
    kwargs.setdefault("index", False)
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, sep="\t", **kwargs)


def _jsonable(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
