"""Feeds the GPU: training bags read, JPEG-decoded and augmented by a pool of threads sized to the job's threads,
a few slides ahead of the model, while the same seed still gives the same bags whatever the worker count.

Why threads: OpenCV's JPEG decoder and numpy release the GIL, so decoding scales over cores without pickling
200 x 512 px bags between processes or forking a CUDA process. Why determinism holds: every random draw (which
patches, which flips, which stain gain) happens in the calling thread, slide by slide, in exactly the order a
plain sequential loop would make them (`BagReader.sample_positions`, `augment_params`); the workers only read,
decode and apply. Zero workers is that plain loop.

On CUDA, JPEG bytes can instead be decoded on the GPU (`decode_jpeg_batch`, torchvision's nvJPEG decoder);
benchmarks/bench_gpu.py measures both data paths against what the model consumes.
"""

from __future__ import annotations

import contextlib
import os
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from msamil.training.data import SlideData, apply_augment, augment_params


@dataclass
class BagRequest:
    """One training step's bag: `n` patches of `slide` (scale-balanced or not), augmented or not."""

    slide: str
    n: int
    balanced: bool = False
    augment: bool = False


def loader_workers(threads: int | None, device: str = "cpu") -> int:
    """Decoding threads for a job with `threads` cores. On a GPU every core can feed it; on a CPU the model
    needs the cores itself, so only larger jobs give half of them to decoding (1-2 threads: none, plain loop)."""
    threads = int(threads or 1)
    if device == "cuda":
        return threads
    return threads // 2 if threads >= 4 else 0


class BagLoader:
    """`bags(requests, rng)` yields one bag per request, in order, `prefetch` bags ahead, decoded on `workers`
    threads. Use as a context manager (or call `close`) to stop the threads."""

    def __init__(self, data: SlideData, workers: int = 0, prefetch: int = 2) -> None:
        self.data = data
        self.workers = max(0, int(workers))
        self.prefetch = max(1, int(prefetch)) if self.workers else 0
        self._decode = ThreadPoolExecutor(self.workers, thread_name_prefix="decode") if self.workers else None
        self._assemble = ThreadPoolExecutor(self.prefetch, thread_name_prefix="bag") if self.workers else None

    def __enter__(self) -> BagLoader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        for pool in (self._decode, self._assemble):
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=True)

    def _plan(self, req: BagRequest, rng: np.random.Generator) -> tuple[contextlib.ExitStack, Any, Any]:
        """Open the slide and make every random draw of this bag now, in the caller's thread and order."""
        stack = contextlib.ExitStack()
        reader = stack.enter_context(self.data.open(req.slide))
        if hasattr(reader, "sample_positions"):
            what: Any = ("positions", reader.sample_positions(req.n, rng, balanced=req.balanced))
            n = len(what[1])
        else:  # a reader without the split draw (test doubles): draw and read here
            what = ("bag", reader.sample(req.n, rng, balanced=req.balanced))
            n = len(what[1].imgs)
        aug = augment_params(n, rng) if req.augment and n else None
        return stack, reader, (what, aug)

    def _assemble_bag(self, stack: contextlib.ExitStack, reader: Any, plan: Any) -> Any:
        (kind, value), aug = plan
        with stack:
            if kind == "positions":
                reader.executor = self._decode
                bag = reader.bag(value)
            else:
                bag = value
        if aug is not None:
            bag.imgs = apply_augment(np.asarray(bag.imgs), *aug)
        return bag

    def bags(self, requests: Iterable[BagRequest], rng: np.random.Generator) -> Iterator[Any]:
        """Bags in request order. With workers, bag i+1..i+prefetch are read while the caller trains on bag i;
        their random draws were made before (in order), so the stream of bags is the same as without workers."""
        if not self.workers:
            for req in requests:
                yield self._assemble_bag(*self._plan(req, rng))
            return
        assert self._assemble is not None
        pending: deque[Future[Any]] = deque()
        it = iter(requests)
        try:
            for req in it:
                pending.append(self._assemble.submit(self._assemble_bag, *self._plan(req, rng)))
                if len(pending) > self.prefetch:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:
            for fut in pending:
                fut.cancel()
            for fut in pending:  # let running reads finish before their files are closed
                with contextlib.suppress(Exception):
                    fut.result()


def decode_jpeg_batch(bufs: Sequence[np.ndarray], device: str = "cuda") -> Any:
    """JPEG buffers -> uint8 tensor (n, P, P, 3) on `device`, decoded there in one batch (nvJPEG on CUDA)."""
    import torch
    from torchvision.io import ImageReadMode, decode_jpeg

    data = [torch.from_numpy(np.asarray(b, dtype=np.uint8)) for b in bufs]
    imgs = decode_jpeg(data, mode=ImageReadMode.RGB, device=device)
    return torch.stack(imgs).permute(0, 2, 3, 1)


def cpu_count() -> int:
    """Cores this process may use (the SLURM allocation, not the node)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1
