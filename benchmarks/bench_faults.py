"""What the fault protections cost (issue 16), as ratios against the same work without them, in one process.

Run: .venv/bin/python benchmarks/bench_faults.py [--repeats 5]

- inspect: `inspect_slide` on a default-size synthetic slide (3072 x 2048, 256 px JPEG tiles) with the level-0 tile
  samples of `Slide.verify`/`verify_tiles`, against the same call with them switched off (process CPU time);
- atomic writes: `write_tsv` of a 2,000-row table and a 16 MB HDF5 file through `atomic_path` with fsync (file and
  directory), against the same writes with fsync switched off (wall time: fsync waits, it does not compute);
- checkpoints: `save_with_mirror` (serialise once, sha256, record, two atomic files) against one atomic
  `checkpoint.save` of the same 4M-parameter state (wall time).
Best of --repeats for each.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import torch

from msamil.slides import slide as slide_mod
from msamil.slides.inspection import inspect_slide
from msamil.slides.synthetic import write_synthetic_slide
from msamil.training import checkpoint
from msamil.util import atomic


def best(fn: Callable[[], None], repeats: int, clock: Callable[[], float]) -> float:
    times = []
    for _ in range(repeats):
        t = clock()
        fn()
        times.append(clock() - t)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp())
    write_synthetic_slide(tmp / "s.svs", tmp / "s.geojson", "s", "malignant", 0)
    rec = {"slide": "s", "patient": "p", "label": "malignant", "path": str(tmp / "s.svs"), "mpp": "",
           "annotation": ""}
    kw = {"table_path": tmp / "t.tsv", "classes": ["benign", "malignant"], "dataset": "x", "default_mpp": None,
          "tissue_cfg": {"seg_mpp": 8.0}, "qc_dir": tmp / "qc"}
    (tmp / "qc").mkdir()
    with_tiles = best(lambda: inspect_slide(rec, **kw), args.repeats, time.process_time)
    original = slide_mod.Slide.verify_tiles
    slide_mod.Slide.verify_tiles = lambda self, *a, **k: None
    without = best(lambda: inspect_slide(rec, **kw), args.repeats, time.process_time)
    slide_mod.Slide.verify_tiles = original
    print(f"inspect_slide with level-0 tile samples / without: {with_tiles / without:.2f}")

    frame = pd.DataFrame(np.random.default_rng(0).random((2000, 8)))
    imgs = np.random.default_rng(0).integers(0, 255, (1024, 64, 64, 4), dtype=np.uint8)

    def writes() -> None:
        atomic.write_tsv(tmp / "t.tsv", frame)
        with atomic.atomic_path(tmp / "c.h5") as path, h5py.File(path, "w") as f:
            f.create_dataset("imgs", data=imgs)

    synced = best(writes, args.repeats, time.perf_counter)
    real_fsync = atomic._fsync
    atomic._fsync = lambda *a, **k: None
    unsynced = best(writes, args.repeats, time.perf_counter)
    atomic._fsync = real_fsync
    print(f"atomic writes with fsync / without: {synced / unsynced:.2f}")

    state = {"model": {f"w{i}": torch.randn(1000, 1000) for i in range(4)}, "epoch": 3}
    mirrored = best(lambda: checkpoint.save_with_mirror(tmp / "last.pt", tmp / "m" / "last.pt", state),
                    args.repeats, time.perf_counter)
    plain = best(lambda: checkpoint.save(tmp / "plain.pt", state), args.repeats, time.perf_counter)
    print(f"checkpoint save with checksummed mirror / one atomic save: {mirrored / plain:.2f}")


if __name__ == "__main__":
    main()
