"""MsaMIL-Net forward passes shared by training, validation, inference and the benchmarks.

A training bag runs through the backbone in micro-batches under activation checkpointing; a whole slide is
embedded chunk by chunk without gradients, then aggregated by IAAM over all its selected patches. bf16 autocast on
CUDA only.
"""

from __future__ import annotations

import contextlib
from functools import partial
from typing import Any

import numpy as np
import torch

from msamil.errors import SlideError
from msamil.models import MsaMILNet
from msamil.models.backbone import to_input


def prepare_input(imgs: torch.Tensor, input_px: int, device: torch.device) -> torch.Tensor:
    x = to_input(imgs, input_px, device)
    return x.contiguous(memory_format=torch.channels_last) if device.type == "cuda" else x


def autocast(device: torch.device) -> contextlib.AbstractContextManager[Any]:
    """bf16 autocast on CUDA; plain fp32 elsewhere (CPU bf16 is slow and would break bit-exact resume tests)."""
    if device.type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


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


@torch.no_grad()
def predict_slide(model: MsaMILNet, reader: Any, device: torch.device, input_px: int, chunk: int,
                  slide: str = "?") -> dict[str, np.ndarray]:
    """All selected patches of a slide: embeddings chunk by chunk (no grad), then IAAM over the whole bag."""
    prepare = partial(prepare_input, input_px=input_px, device=device)
    embs, coords, scales, index = [], [], [], []
    extent = (1.0, 1.0)
    for bag in reader.chunks(chunk):
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
    c, s = np.concatenate(coords), np.concatenate(scales)
    with autocast(device):
        logits, attn = model.aggregate(torch.cat(embs), torch.as_tensor(c, device=device),
                                       torch.as_tensor(s, device=device), extent)
    return {"logits": logits.float().cpu().numpy(), "attention": attn.float().cpu().numpy(), "coords": c,
            "scale_idx": s, "index": np.concatenate(index)}
