"""MsaMIL-Net forward passes shared by training, validation, inference and the benchmarks.

A training bag runs through the backbone in micro-batches under activation checkpointing. Inference sees what
training saw (DESIGN.md section 6): a slide's selected patches are embedded once, chunk by chunk without
gradients, then split into scale-balanced bags of `bag_size` drawn exactly as training draws them
(`balanced_shares` per scale, uniform without replacement within a bag), each bag is aggregated by IAAM, and the
slide's probabilities are the mean over bags.

Why not one bag of every patch: training bags hold `bag_size` patches in equal shares per scale, while a whole
slide holds roughly 16:4:1 20x:10x:5x patches and many times more of them. IAAM's sinusoidal position encoding is
indexed by rank within the (sorted) bag, so a whole-slide bag would also use ranks training never produced.
Bags of the training size keep the scale mix, the bag length and the rank range of training.

Determinism: the patches are put in a canonical order (scale, cache index) before the bags are drawn from a
seeded generator, and IAAM sorts each bag by (x, y, scale), so a prediction does not depend on the order the
reader returns patches in. The bags cover every patch at least once (a scale's patches are walked in a random
cyclic order), and at least `min_bags` bags are averaged, which bounds the dependence on the draw seed.
bf16 autocast on CUDA only.
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import partial
from typing import Any

import numpy as np
import torch

from msamil.errors import SlideError
from msamil.models import MsaMILNet
from msamil.models.backbone import autocast, to_input
from msamil.util.seeding import stream_seed

__all__ = ["autocast", "bag_forward", "inference_bags", "policy", "predict_slide", "prepare_input"]


def prepare_input(imgs: torch.Tensor, input_px: int, device: torch.device) -> torch.Tensor:
    x = to_input(imgs, input_px, device)
    return x.contiguous(memory_format=torch.channels_last) if device.type == "cuda" else x


def bag_forward(model: MsaMILNet, bag: Any, device: torch.device, input_px: int, micro_batch: int | None,
                checkpointing: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """One bag (uint8 images, coords, scale_idx, width, height) -> (logits (C,), attention (N,)), fp32."""
    imgs = torch.as_tensor(np.ascontiguousarray(bag.imgs))
    coords = torch.as_tensor(np.asarray(bag.coords), dtype=torch.int64, device=device)
    scale = torch.as_tensor(np.asarray(bag.scale_idx), dtype=torch.int64, device=device)
    prepare = partial(prepare_input, input_px=input_px, device=device)
    with autocast(device):
        emb = model.embed(imgs, micro_batch, checkpointing, prepare)
        logits, attn = model.aggregate(emb, coords, scale, (float(bag.width), float(bag.height)))
    return logits.float(), attn.float()


def inference_bags(scale_idx: np.ndarray, bag_size: int, rng: np.random.Generator, min_bags: int = 1,
                   balanced: bool = True) -> list[np.ndarray]:
    """Bags (sorted position arrays into `scale_idx`) drawn as training draws them, covering every position.

    Each bag takes `balanced_shares(sizes, bag_size)` positions of each scale (or `bag_size` of all positions when
    not `balanced`), consecutive in a random cyclic order of that scale, so each bag is a uniform draw without
    replacement and the bags together cover every patch. A slide with no more than `bag_size` patches is one bag.
    """
    from msamil.cache.bags import balanced_shares

    scale_idx = np.asarray(scale_idx)
    if len(scale_idx) <= bag_size:
        return [np.arange(len(scale_idx))]
    if balanced:
        groups = [np.flatnonzero(scale_idx == s) for s in np.unique(scale_idx)]
        takes = balanced_shares(np.array([len(g) for g in groups]), bag_size)
    else:
        groups, takes = [np.arange(len(scale_idx))], np.array([bag_size])
    walks = [g[rng.permutation(len(g))] for g in groups]
    n_bags = max(int(min_bags), *(-(-len(g) // int(t)) for g, t in zip(groups, takes, strict=True) if t))
    bags = []
    for j in range(n_bags):
        parts = [w[(j * int(t) + np.arange(int(t))) % len(w)] for w, t in zip(walks, takes, strict=True) if t]
        bags.append(np.sort(np.concatenate(parts)))
    return bags


@torch.no_grad()
def predict_slide(model: MsaMILNet, reader: Any, device: torch.device, input_px: int, chunk: int,
                  slide: str = "?", *, bag_size: int, min_bags: int = 8, seed: int = 0,
                  balanced: bool = True, max_patches: int | None = None) -> dict[str, np.ndarray]:
    """A slide's prediction under the training bag policy (module docstring).

    `max_patches` (validation): embed only a seeded, scale-balanced draw of that many patches instead of every
    selected one. Model selection needs a stable estimate per slide each epoch, not full coverage, and embedding
    every patch of every validation slide each epoch cost as much as the epoch's training.

    Returns `logits` = log of the bag-averaged probabilities (softmax gives them back), and per patch (canonical
    order: scale, then cache index) `coords`, `scale_idx`, `index` and `attention`: its mean attention over the
    bags that held it (within a bag attention sums to 1), plus `n_bags`.
    """
    prepare = partial(prepare_input, input_px=input_px, device=device)
    rng = np.random.default_rng(seed)
    embs, coords, scales, index = [], [], [], []
    extent = (1.0, 1.0)
    for bag in _read_chunks(reader, chunk, max_patches, rng, balanced):
        if len(bag.imgs) == 0:
            continue
        with autocast(device):
            embs.append(model.embed(torch.as_tensor(np.ascontiguousarray(bag.imgs)), chunk, False, prepare))
        coords.append(np.asarray(bag.coords, dtype=np.int64))
        scales.append(np.asarray(bag.scale_idx, dtype=np.int64))
        index.append(np.asarray(bag.index, dtype=np.int64))
        extent = (float(bag.width), float(bag.height))
    if not embs:
        raise SlideError(slide, "no selected patches at the method's scales",
                         "check the cache and the SFFM selection (fallback_k) of this slide")
    s, idx = np.concatenate(scales), np.concatenate(index)
    canon = np.lexsort((idx, s))
    c, s, idx = np.concatenate(coords)[canon], s[canon], idx[canon]
    emb = torch.cat(embs)[torch.as_tensor(canon, device=device)]
    c_t, s_t = torch.as_tensor(c, device=device), torch.as_tensor(s, device=device)
    bags = inference_bags(s, int(bag_size), rng, min_bags, balanced)
    probs = []
    attn_sum = np.zeros(len(s), dtype=np.float64)
    attn_n = np.zeros(len(s), dtype=np.int64)
    for pos in bags:
        sel = torch.as_tensor(pos, device=device)
        with autocast(device):
            logits, attn = model.aggregate(emb[sel], c_t[sel], s_t[sel], extent)
        probs.append(torch.softmax(logits.float(), dim=-1).cpu().numpy())
        np.add.at(attn_sum, pos, attn.float().cpu().numpy())
        np.add.at(attn_n, pos, 1)
    mean = np.clip(np.mean(probs, axis=0), 1e-12, None)
    return {"logits": np.log(mean / mean.sum()).astype(np.float32),
            "attention": (attn_sum / np.maximum(attn_n, 1)).astype(np.float32), "coords": c, "scale_idx": s,
            "index": idx, "n_bags": np.asarray(len(bags))}


def _read_chunks(reader: Any, chunk: int, max_patches: int | None, rng: np.random.Generator,
                 balanced: bool) -> Iterator[Any]:
    """Every selected patch in chunks, or (with `max_patches` below the slide's count) one seeded draw of them."""
    if max_patches is None or len(reader) <= max_patches:
        yield from reader.chunks(chunk)
        return
    pos = reader.sample_positions(int(max_patches), rng, balanced)
    for a in range(0, len(pos), chunk):
        yield reader.bag(pos[a:a + chunk])


def policy(train_cfg: dict[str, Any], seed: int, fold: int, slide: str, validation: bool = False) -> dict[str, Any]:
    """predict_slide's bag-policy arguments for one slide of a fold: the trainer's test predictions and
    predict on new slides (msamil.predict.apply) draw the same bags from the same stream. `validation` uses
    `val_bags` bags on a draw of val_bags * bag_size patches, when set (per-epoch model selection)."""
    out = {"bag_size": int(train_cfg["bag_size"]), "min_bags": int(train_cfg.get("infer_bags", 8)),
           "seed": stream_seed(seed, fold, f"infer/{slide}"), "balanced": bool(train_cfg.get("scale_balanced", False))}
    val_bags = train_cfg.get("val_bags")
    if validation and val_bags:
        out.update(min_bags=int(val_bags), max_patches=int(val_bags) * out["bag_size"])
    return out
