"""benchmarks/bench_gpu.py (the paper preset's model on a GPU) runs end to end in its tiny CPU variant: caches
written, the three measurements made and reported. No timing is asserted: the figures belong in RESULTS.md."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_tiny_cpu_variant(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "bench_gpu.py"), "--tiny", "--device", "cpu",
                           "--workers", "2", "--steps", "1", "--bags", "16", "--out", str(out)],
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(out.read_text())
    tp = summary["throughput"]
    assert tp["backbone"] == "test_efficientnet" and tp["checkpointing"] is True and tp["workers"] == 2
    for key in ("e2e_patches_per_s", "model_only_patches_per_s", "plain_patches_per_s", "data_cpu_patches_per_s",
                "e2e_vs_plain", "data_cpu_vs_consumption"):
        assert math.isfinite(tp[key]) and tp[key] > 0, key
    assert [row["bag"] for row in summary["memory"]] == [16]
    assert all(row["patches"] == row["bag"] and row["peak_mb"] > 0 for row in summary["memory"])


def test_paper_settings_come_from_the_preset() -> None:
    sys.path.insert(0, str(REPO / "benchmarks"))
    import argparse

    from bench_gpu import settings

    cfg = settings(argparse.Namespace(tiny=False, bag=None, bags=None))
    assert cfg["model"]["backbone"] == "efficientnet_b3" and cfg["model"]["input_px"] == 512
    assert cfg["model"]["dim"] == 512 and cfg["bag"] == 200 and cfg["checkpointing"] is True
    assert cfg["patch_px"] == 512 and cfg["bags"] == [200, 800, 3200] and cfg["model"]["pretrained"] is False
