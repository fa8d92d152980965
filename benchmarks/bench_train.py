"""Benchmarks of the end-to-end MsaMIL-Net training step (issue 9).

1. Throughput: patches/s of the full training step (bag read from a real HDF5 cache with `msamil.cache.bags.BagReader`,
   uint8 -> input conversion, backbone in micro-batches with activation checkpointing, IAAM, loss, backward,
   AdamW step) against a plain timm training loop of the same backbone, input size and batch on random tensors,
   in the same process, interleaved so machine load hits both alike.
2. Peak memory (RSS on CPU, CUDA peak allocation on a GPU) against bag size, each size in a fresh process;
   with checkpointing it should stay flat, without it it grows with the bag.

    .venv/bin/python benchmarks/bench_train.py throughput --backbone efficientnet_b0 --input-px 128 --bag 32
    .venv/bin/python benchmarks/bench_train.py memory --bags 50 200 800
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from msamil.cache.bags import BagReader  # noqa: E402
from msamil.models import MsaMILNet  # noqa: E402
from msamil.models.backbone import select_device  # noqa: E402
from msamil.training.inference import autocast, bag_forward  # noqa: E402
from msamil.training.outputs import peak_memory_mb  # noqa: E402


def model_cfg(args: argparse.Namespace) -> dict[str, Any]:
    return {"backbone": args.backbone, "pretrained": False, "pretrained_path": None, "input_px": args.input_px,
            "dim": args.dim, "token_layers": 1, "token_heads": 4, "mhe_layers": 1, "mhe_heads": 4, "mhe_rank": 8,
            "n_queries": 10, "dropout": 0.1}


def write_cache(path: Path, n: int, px: int, seed: int = 0) -> None:
    """A synthetic cache in the CONTRACT layout with `n` patches per scale."""
    rng = np.random.default_rng(seed)
    with h5py.File(path, "w") as h5:
        h5.attrs.update({"slide": "bench", "width": 100_000, "height": 100_000, "patch_px": px, "mpp": 0.5,
                         "complete": True})
        for k, scale in enumerate(("20x", "10x", "5x")):
            g = h5.create_group(scale)
            g.create_dataset("coords", data=rng.integers(0, 90_000, size=(n, 2)).astype(np.int64))
            g.create_dataset("imgs", data=rng.integers(0, 255, size=(n, px, px, 3), dtype=np.uint8),
                             chunks=(1, px, px, 3))
            g.attrs["patch_size_level0"] = px * 2**k


def e2e_step(model: MsaMILNet, opt: torch.optim.Optimizer, reader: BagReader, rng: np.random.Generator,
             args: argparse.Namespace, device: torch.device) -> int:
    bag = reader.sample(args.bag, rng)
    logits, _ = bag_forward(model, bag, device, args.input_px, args.micro, args.checkpointing)
    loss = nn.functional.cross_entropy(logits[None], torch.tensor([1], device=device))
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    return len(bag.imgs)


def plain_step(net: nn.Module, opt: torch.optim.Optimizer, args: argparse.Namespace, device: torch.device) -> int:
    """The reference: timm classifier, one batch of `bag` random images at `input_px`, fwd + bwd + step."""
    x = torch.randn(args.bag, 3, args.input_px, args.input_px, device=device)
    if device.type == "cuda":
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 2, (args.bag,), device=device)
    with autocast(device):
        loss = nn.functional.cross_entropy(net(x).float(), y)
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    return args.bag


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def throughput(args: argparse.Namespace) -> dict[str, Any]:
    import timm

    torch.set_num_threads(args.threads)
    device = select_device(args.device)
    torch.manual_seed(0)
    model = MsaMILNet(model_cfg(args), 2, seed=0).to(device)
    model.frozen_bn = True
    model.train()
    net = timm.create_model(args.backbone, pretrained=False, num_classes=2).to(device).train()
    if device.type == "cuda":
        model, net = model.to(memory_format=torch.channels_last), net.to(memory_format=torch.channels_last)
    opt_a = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    opt_b = torch.optim.AdamW(net.parameters(), lr=1e-5)
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(tmp) / "bench.h5"
        write_cache(cache, max(args.bag, 64), args.patch_px)
        with BagReader(cache) as reader:
            for _ in range(args.warmup):
                e2e_step(model, opt_a, reader, rng, args, device)
                plain_step(net, opt_b, args, device)
            rates: dict[str, list[float]] = {"e2e": [], "plain": []}
            for _ in range(args.repeats):  # interleaved: A B A B ...
                for name in ("e2e", "plain"):
                    _sync(device)
                    t0 = time.perf_counter()
                    n = e2e_step(model, opt_a, reader, rng, args, device) if name == "e2e" else \
                        plain_step(net, opt_b, args, device)
                    _sync(device)
                    rates[name].append(n / (time.perf_counter() - t0))
    e2e, plain = statistics.median(rates["e2e"]), statistics.median(rates["plain"])
    return {"backbone": args.backbone, "input_px": args.input_px, "bag": args.bag, "micro_batch": args.micro,
            "checkpointing": args.checkpointing, "device": str(device), "threads": args.threads,
            "e2e_patches_per_s": round(e2e, 2), "plain_timm_patches_per_s": round(plain, 2),
            "ratio": round(e2e / plain, 3), "repeats": args.repeats}


def memory_one(args: argparse.Namespace) -> dict[str, Any]:
    """One bag size in this (fresh) process: a few training steps, then the process's peak memory."""
    torch.set_num_threads(args.threads)
    device = select_device(args.device)
    model = MsaMILNet(model_cfg(args), 2, seed=0).to(device)
    model.frozen_bn = True
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(tmp) / "bench.h5"
        write_cache(cache, args.bag, args.patch_px)
        base = peak_memory_mb(device)
        with BagReader(cache) as reader:
            for _ in range(2):
                e2e_step(model, opt, reader, rng, args, device)
    return {"bag": args.bag, "checkpointing": args.checkpointing, "peak_mb": round(peak_memory_mb(device), 1),
            "peak_before_training_mb": round(base, 1), "device": str(device)}


def memory(args: argparse.Namespace) -> list[dict[str, Any]]:
    rows = []
    for ckpt in (True, False):
        for bag in args.bags:
            if not ckpt and bag > args.max_bag_without_ckpt:
                continue
            cmd = [sys.executable, __file__, "memory-one", "--bag", str(bag), "--backbone", args.backbone,
                   "--input-px", str(args.input_px), "--patch-px", str(args.patch_px), "--micro", str(args.micro),
                   "--dim", str(args.dim), "--threads", str(args.threads), "--device", args.device]
            if not ckpt:
                cmd.append("--no-checkpointing")
            out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
            rows.append(json.loads(out.strip().splitlines()[-1]))
            print(json.dumps(rows[-1]), flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=["throughput", "memory", "memory-one"])
    parser.add_argument("--backbone", default="efficientnet_b0")
    parser.add_argument("--input-px", type=int, default=128)
    parser.add_argument("--patch-px", type=int, default=128, help="cache patch size (resized to input-px)")
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--bag", type=int, default=32)
    parser.add_argument("--bags", type=int, nargs="+", default=[50, 200, 800])
    parser.add_argument("--micro", type=int, default=16)
    parser.add_argument("--no-checkpointing", dest="checkpointing", action="store_false")
    parser.add_argument("--max-bag-without-ckpt", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    if args.what == "throughput":
        print(json.dumps(throughput(args)))
    elif args.what == "memory":
        memory(args)
    else:
        print(json.dumps(memory_one(args)))


if __name__ == "__main__":
    main()
