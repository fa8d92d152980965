"""GPU benchmark of the paper preset's model (issue 17), one command on a GPU machine:

    .venv/bin/python benchmarks/bench_gpu.py --out gpu_bench.json        # paper preset, CUDA
    .venv/bin/python benchmarks/bench_gpu.py --tiny --device cpu         # the CPU smoke variant (test suite)

Model: presets/paper.yaml's `model` and `train` sections (efficientnet_b3 at 512 px, d = 512, bags of 200,
micro-batches of 32, activation checkpointing on), bf16 autocast and channels_last on CUDA, random weights.
Data: JPEG caches in the CONTRACT layout that the script writes itself from fake H&E-like 512 px patches
(quality 90, like `cache.encoding: jpeg`), read through msamil.training.loader with `--workers` decoding threads.

It measures, each in this process and interleaved against its reference so machine load hits both alike:
  (a) end-to-end training patches/s (loader -> bag_forward -> loss -> backward -> AdamW) against a plain timm
      training loop of the same backbone, input size and micro-batch on tensors already on the device
      (goal: ratio >= 0.9); also the model alone on pre-decoded bags, which splits the gap into data and model;
  (b) peak GPU memory (CUDA max allocated; RSS on CPU) for bags of 200, 800 and 3200, each in a fresh process;
  (c) data-path patches/s (threads decoding on the CPU; nvJPEG batch decoding on CUDA) against the rate at which
      the model consumes patches: >= 1 means the GPU never waits for data.
Prints one JSON object per measurement and a summary at the end (also written to --out).
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import cv2
import h5py
import numpy as np
import torch
import yaml
from torch import nn

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from msamil.config import SCALES  # noqa: E402
from msamil.models import MsaMILNet  # noqa: E402
from msamil.training.data import SlideData  # noqa: E402
from msamil.training.inference import autocast, bag_forward  # noqa: E402
from msamil.training.loader import BagLoader, BagRequest, cpu_count, decode_jpeg_batch  # noqa: E402
from msamil.util.device import select_device  # noqa: E402

TINY = {"model": {"backbone": "test_efficientnet", "input_px": 32, "dim": 32, "token_layers": 1, "token_heads": 2,
                  "mhe_layers": 1, "mhe_heads": 2, "mhe_rank": 4, "n_queries": 3},
        "train": {"bag_size": 16, "micro_batch": 8}, "patch_px": 64, "bags": [16, 32, 64]}


def settings(args: argparse.Namespace) -> dict[str, Any]:
    """The paper preset's model/train settings (random weights), or the tiny CPU variant."""
    preset = yaml.safe_load((REPO / "presets" / "paper.yaml").read_text())
    model = {**preset["model"], "pretrained": False, "pretrained_path": None}
    train = dict(preset["train"])
    patch_px, bags = int(preset["patch_px"]), [200, 800, 3200]
    if args.tiny:
        model.update(TINY["model"])
        train.update(TINY["train"])
        patch_px, bags = TINY["patch_px"], TINY["bags"]
    return {"model": model, "bag": int(args.bag or train["bag_size"]), "micro": int(train["micro_batch"]),
            "checkpointing": bool(train.get("checkpointing", True)), "patch_px": patch_px,
            "bags": args.bags or bags}


# ------------------------------------------------------------------------------------------------------- caches
def fake_patches(k: int, px: int, seed: int) -> list[np.ndarray]:
    """`k` H&E-like RGB patches (pink stroma, purple nuclei, some texture), JPEG-encoded at quality 90: a decoder
    faces what it faces on real tissue, unlike noise (incompressible) or flat colour (trivial)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(k):
        img = np.empty((px, px, 3), np.uint8)
        img[:] = (rng.integers(200, 235), rng.integers(150, 185), rng.integers(190, 220))
        for _ in range(int(px * px / 900)):
            c = (int(rng.integers(0, px)), int(rng.integers(0, px)))
            r = int(rng.integers(max(2, px // 100), max(3, px // 40)))
            cv2.circle(img, c, r, (int(rng.integers(70, 120)), int(rng.integers(40, 80)),
                                   int(rng.integers(120, 170))), -1)
        noise = rng.normal(0, 6, img.shape)
        img = np.clip(cv2.GaussianBlur(img, (3, 3), 0) + noise, 0, 255).astype(np.uint8)
        ok, buf = cv2.imencode(".jpg", cv2.cvtColor(img, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 90])
        assert ok
        out.append(buf.reshape(-1))
    return out


def write_jpeg_cache(path: Path, n: int, px: int, encoded: list[np.ndarray], seed: int) -> None:
    """A cache in the CONTRACT layout with `n` JPEG patches per scale (encoded bytes reused cyclically)."""
    rng = np.random.default_rng(seed)
    with h5py.File(path, "w") as h5:
        for k, scale in enumerate(SCALES):
            g = h5.create_group(scale)
            g.create_dataset("coords", data=rng.integers(0, 90_000, size=(n, 2)).astype(np.int64))
            g.create_dataset("parent", data=np.full(n, -1, np.int64))
            g.create_dataset("tissue_frac", data=np.ones(n, np.float32))
            imgs = g.create_dataset("imgs", shape=(n,), dtype=h5py.vlen_dtype(np.uint8), chunks=(min(n, 64),))
            data = np.empty(n, dtype=object)
            for i in range(n):
                data[i] = encoded[(i * 7 + k) % len(encoded)]
            imgs[:] = data
            g.attrs.update({"patch_size_level0": px * 2**k, "encoding": "jpeg"})
        h5.attrs.update({"slide": path.stem, "width": 100_000, "height": 100_000, "patch_px": px, "mpp": 0.5,
                         "encoding": "jpeg", "complete": True})


def make_caches(root: Path, n_slides: int, per_scale: int, px: int) -> list[Path]:
    encoded = fake_patches(48, px, seed=0)
    paths = []
    for i in range(n_slides):
        paths.append(root / f"bench_{i:02d}.h5")
        write_jpeg_cache(paths[-1], per_scale, px, encoded, seed=i)
    return paths


# -------------------------------------------------------------------------------------------------------- steps
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def build(cfg: dict[str, Any], device: torch.device) -> tuple[MsaMILNet, torch.optim.Optimizer]:
    model = MsaMILNet(cfg["model"], 2, seed=0).to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    model.frozen_bn = True  # the trainer's calibrated-BatchNorm mode (statistics fixed while training)
    model.train()
    return model, torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)


def train_step(model: MsaMILNet, opt: torch.optim.Optimizer, bag: Any, cfg: dict[str, Any],
               device: torch.device) -> int:
    logits, _ = bag_forward(model, bag, device, int(cfg["model"]["input_px"]), cfg["micro"], cfg["checkpointing"])
    nn.functional.cross_entropy(logits[None], torch.tensor([1], device=device)).backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    return len(bag.imgs)


def plain_step(net: nn.Module, opt: torch.optim.Optimizer, batches: list[torch.Tensor], labels: torch.Tensor,
               device: torch.device) -> int:
    """The reference: a timm classifier, fwd + bwd per micro-batch on tensors already on the device, one step."""
    for x in batches:
        with autocast(device):
            loss = nn.functional.cross_entropy(net(x).float(), labels)
        loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    return sum(len(x) for x in batches)


def requests(paths: list[Path], n: int, bag: int) -> list[BagRequest]:
    return [BagRequest(paths[i % len(paths)].stem, bag, balanced=True) for i in range(n)]


def throughput(args: argparse.Namespace, cfg: dict[str, Any], device: torch.device, paths: list[Path]) -> dict:
    """(a) and (c): end-to-end vs plain timm vs model alone, and the data path alone (CPU threads, GPU decode)."""
    import timm

    model, opt = build(cfg, device)
    px = int(cfg["model"]["input_px"])
    net = timm.create_model(cfg["model"]["backbone"], pretrained=False, num_classes=2).to(device).train()
    if device.type == "cuda":
        net = net.to(memory_format=torch.channels_last)
    opt_b = torch.optim.AdamW(net.parameters(), lr=1e-5)
    n_micro = math.ceil(cfg["bag"] / cfg["micro"])
    batches = [torch.randn(cfg["micro"], 3, px, px, device=device) for _ in range(n_micro)]
    if device.type == "cuda":
        batches = [b.contiguous(memory_format=torch.channels_last) for b in batches]
    labels = torch.randint(0, 2, (cfg["micro"],), device=device)
    data = SlideData(paths, None, list(SCALES))
    rng = np.random.default_rng(0)
    rates: dict[str, list[float]] = {"e2e": [], "model_only": [], "plain": [], "data_cpu": [], "data_gpu": []}
    with BagLoader(data, args.workers, prefetch=2) as loader:
        fixed = list(loader.bags(requests(paths, 2, cfg["bag"]), rng))  # pre-decoded bags: the model alone
        for _ in range(args.warmup):
            train_step(model, opt, fixed[0], cfg, device)
            plain_step(net, opt_b, batches, labels, device)
        for rep in range(args.repeats):
            stream = loader.bags(requests(paths, args.steps, cfg["bag"]), rng)
            _sync(device)
            t0, n = time.perf_counter(), 0
            for bag in stream:
                n += train_step(model, opt, bag, cfg, device)
            _sync(device)
            rates["e2e"].append(n / (time.perf_counter() - t0))
            for name in ("model_only", "plain"):
                _sync(device)
                t0, n = time.perf_counter(), 0
                for k in range(args.steps):
                    n += (train_step(model, opt, fixed[k % 2], cfg, device) if name == "model_only"
                          else plain_step(net, opt_b, batches, labels, device))
                _sync(device)
                rates[name].append(n / (time.perf_counter() - t0))
            t0, n = time.perf_counter(), 0
            for bag in loader.bags(requests(paths, args.steps, cfg["bag"]), rng):
                n += len(bag.imgs)
            rates["data_cpu"].append(n / (time.perf_counter() - t0))
            if device.type == "cuda":
                rates["data_gpu"].append(gpu_decode_rate(paths, cfg["bag"], args.steps, rng, rep))
    med = {k: statistics.median(v) for k, v in rates.items() if v}
    out = {"what": "throughput", "device": str(device), "backbone": cfg["model"]["backbone"], "input_px": px,
           "bag": cfg["bag"], "micro_batch": cfg["micro"], "checkpointing": cfg["checkpointing"],
           "workers": args.workers, "steps": args.steps, "repeats": args.repeats,
           **{f"{k}_patches_per_s": round(v, 2) for k, v in med.items()},
           "e2e_vs_plain": round(med["e2e"] / med["plain"], 3),
           "model_only_vs_plain": round(med["model_only"] / med["plain"], 3),
           "data_cpu_vs_consumption": round(med["data_cpu"] / med["model_only"], 3)}
    if "data_gpu" in med:
        out["data_gpu_vs_consumption"] = round(med["data_gpu"] / med["model_only"], 3)
    return out


def gpu_decode_rate(paths: list[Path], bag: int, steps: int, rng: np.random.Generator, rep: int) -> float:
    """Patches/s of reading a bag's JPEG bytes on one thread and decoding them on the GPU in nvJPEG batches."""
    from msamil.cache.bags import BagReader

    torch.cuda.synchronize()
    t0, n = time.perf_counter(), 0
    for k in range(steps):
        with BagReader(paths[(k + rep) % len(paths)]) as reader:
            for scale in reader.scales:
                idx = np.sort(rng.choice(len(reader.selected[scale]), size=bag // len(reader.scales), replace=False))
                n += len(decode_jpeg_batch(reader.read_encoded(scale, idx)))
    torch.cuda.synchronize()
    return n / (time.perf_counter() - t0)


def peak_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def memory_one(args: argparse.Namespace, cfg: dict[str, Any], device: torch.device, paths: list[Path]) -> dict:
    """(b) for one bag size, in this (fresh) process: two training steps, then the peak."""
    model, opt = build(cfg, device)
    cfg = {**cfg, "bag": args.bag}
    with BagLoader(SlideData(paths, None, list(SCALES)), args.workers, prefetch=1) as loader:
        for bag in loader.bags(requests(paths, 2, args.bag), np.random.default_rng(0)):
            got = train_step(model, opt, bag, cfg, device)
    return {"what": "memory", "bag": args.bag, "patches": got, "checkpointing": cfg["checkpointing"],
            "peak_mb": round(peak_mb(device), 1), "device": str(device),
            "measure": "cuda max_memory_allocated" if device.type == "cuda" else "process max RSS"}


def memory(args: argparse.Namespace, cfg: dict[str, Any], cache_dir: Path) -> list[dict]:
    rows = []
    for bag in cfg["bags"]:
        cmd = [sys.executable, __file__, "--memory-one", "--bag", str(bag), "--device", args.device,
               "--workers", str(args.workers), "--cache-dir", str(cache_dir)] + (["--tiny"] if args.tiny else [])
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            rows.append({"what": "memory", "bag": bag, "error": done.stderr.strip().splitlines()[-1:]})
        else:
            rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
        print(json.dumps(rows[-1]), flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="tiny model and patches (CPU smoke test)")
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu", "auto"])
    parser.add_argument("--workers", type=int, default=None, help="decoding threads (default: the usable cores)")
    parser.add_argument("--steps", type=int, default=None, help="bags per timed run (default 8; tiny 2)")
    parser.add_argument("--repeats", type=int, default=None, help="interleaved timed runs (default 3; tiny 1)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--bag", type=int, default=None)
    parser.add_argument("--bags", type=int, nargs="+", default=None, help="bag sizes for peak memory")
    parser.add_argument("--slides", type=int, default=4)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--cache-dir", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--memory-one", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.workers = cpu_count() if args.workers is None else args.workers
    args.steps = args.steps or (2 if args.tiny else 8)
    args.repeats = args.repeats or (1 if args.tiny else 3)
    if args.tiny:
        args.warmup = min(args.warmup, 1)
    cfg = settings(args)
    device = select_device(args.device)
    torch.manual_seed(0)
    if args.memory_one:
        paths = sorted(args.cache_dir.glob("bench_*.h5"))
        print(json.dumps(memory_one(args, cfg, device, paths)))
        return
    per_scale = math.ceil(max(cfg["bags"] + [cfg["bag"]]) / 3) + 8  # the largest bag fits in one slide
    with tempfile.TemporaryDirectory(dir=args.cache_dir) as tmp:
        t0 = time.perf_counter()
        paths = make_caches(Path(tmp), args.slides, per_scale, cfg["patch_px"])
        print(json.dumps({"what": "caches", "slides": len(paths), "patches_per_slide": 3 * per_scale,
                          "mb": round(sum(p.stat().st_size for p in paths) / 2**20, 1),
                          "seconds": round(time.perf_counter() - t0, 1)}), flush=True)
        summary: dict[str, Any] = {"device": str(device), "gpu": torch.cuda.get_device_name() if device.type ==
                                   "cuda" else None, "torch": torch.__version__, "cores": cpu_count(),
                                   "date": time.strftime("%Y-%m-%d")}
        summary["throughput"] = throughput(args, cfg, device, paths)
        print(json.dumps(summary["throughput"]), flush=True)
        summary["memory"] = memory(args, cfg, Path(tmp))
    print(json.dumps(summary))
    if args.out:
        args.out.write_text(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
