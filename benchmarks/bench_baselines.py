"""Throughput of the baseline phases (feature extraction, a DINO epoch, ICMIL fine-tuning, ABMIL) on fake caches.

Usage: python benchmarks/bench_baselines.py [--backbone test_efficientnet] [--patch-px 64] [--device auto]
Prints one TSV row per phase; numbers go to benchmarks/RESULTS.md by hand, with the machine they came from.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from msamil.baselines.abmil import train_abmil  # noqa: E402
from msamil.baselines.dino import dino_pretrain  # noqa: E402
from msamil.baselines.features import PooledBackbone, Throughput, extract_slides  # noqa: E402
from msamil.baselines.icmil import icmil_finetune  # noqa: E402
from msamil.baselines.sampling import PatchSampler  # noqa: E402
from msamil.models.backbone import create_backbone, select_device  # noqa: E402
from tests.baseline_fixtures import fake_dataset  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--backbone", default="test_efficientnet")
    ap.add_argument("--patch-px", type=int, default=64)
    ap.add_argument("--slides", type=int, default=8)
    ap.add_argument("--patches", type=int, default=256, help="20x patches per slide")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    dev = select_device(args.device)
    model_cfg = {"backbone": args.backbone, "pretrained": False, "input_px": args.patch_px}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        ds = fake_dataset(Path(tmp), n_slides=args.slides, n_patches=args.patches, patch_px=args.patch_px)
        caches = {p.stem: p for p in ds["caches"]}
        embedder = PooledBackbone(create_backbone(model_cfg, seed=0)).to(dev).eval()
        tp = Throughput()
        feats = extract_slides(embedder, caches, input_px=args.patch_px, chunk=64, device=dev, throughput=tp)
        rows.append(("feature_extraction", tp.as_dict()))

        sampler = PatchSampler(caches, seed=0)
        res = dino_pretrain(create_backbone(model_cfg, seed=0), sampler, input_px=args.patch_px, device=dev,
                            cfg={"epochs": 1, "batch_size": args.batch, "patches_per_epoch": 8 * args.batch,
                                 "out_dim": 256, "head_hidden": 256, "bottleneck": 64, "n_local_crops": 2})
        rows.append(("dino_epoch", {k: res.epochs[0][k] for k in ("patches", "wall_s", "patches_per_s")}))

        labels = [int(i % 2) for i in range(len(caches))]
        t = time.perf_counter()
        head = train_abmil([f.features for f in feats.values()], labels, [], [], n_classes=2,
                           cfg={"epochs": 5, "hidden": 64, "attn_dim": 32}, device=dev)
        wall = time.perf_counter() - t
        rows.append(("abmil_5_epochs", {"patches": 5 * sum(len(f.features) for f in feats.values()),
                                        "wall_s": round(wall, 3),
                                        "patches_per_s": round(5 * sum(len(f.features) for f in feats.values())
                                                               / wall, 1)}))
        ft = icmil_finetune(embedder, head.model, sampler, input_px=args.patch_px, device=dev,
                            cfg={"iters": 8, "batch_size": args.batch})
        rows.append(("icmil_finetune", ft.throughput.as_dict()))
    print(f"# backbone={args.backbone} patch_px={args.patch_px} device={dev} threads={args.threads}")
    print("phase\tpatches\twall_s\tpatches_per_s")
    for name, r in rows:
        print(f"{name}\t{r['patches']}\t{r['wall_s']}\t{r['patches_per_s']}")


if __name__ == "__main__":
    main()
