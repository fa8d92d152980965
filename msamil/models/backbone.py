"""The timm patch backbone shared by MsaMIL-Net and every baseline, so all methods start from the same weights."""

from __future__ import annotations

import contextlib
import hashlib
from typing import Any

import numpy as np
import torch
from torch import nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def create_backbone(model_cfg: dict[str, Any], seed: int | None = None) -> nn.Module:
    """A timm model returning its last feature map (B, C, h, w); `num_features` gives C.

    Weights: random unless `pretrained` is true. Then they come from a local file, never the network (compute
    nodes are often offline): `pretrained_path` if given, else the cache that the local rule `fetch_weights`
    filled on the submitting machine (msamil.models.weights). `model_cfg["backbone_kwargs"]` goes to
    `timm.create_model`, e.g. `{output_stride: 16}` for a 2x2 map from 32 px CNN inputs.

    Random weights depend on `seed` alone: the model is built under a forked torch RNG seeded with it, so the
    caller's global RNG is untouched and every method given the same seed gets bit-identical weights
    (msamil.util.seeding.stream_seed(seed, fold, "backbone")).
    """
    import timm

    from msamil.models.weights import architecture, backbone_kwargs, load_weights, weights_file

    path = weights_file(model_cfg)
    name, extra = architecture(model_cfg)
    with torch.random.fork_rng(devices=[]):
        if seed is not None:
            torch.manual_seed(seed)
        model = timm.create_model(name, pretrained=False, num_classes=0, global_pool="",
                                  **{**extra, **backbone_kwargs(model_cfg)})
    if path is not None:
        load_weights(model, path, str(model_cfg["backbone"]))
    return model


def state_fingerprint(module: nn.Module) -> str:
    """sha256 over a module's state_dict (names, dtypes, shapes, bytes): recorded in efficiency.json as
    `backbone_init_sha256`, so "every method of a fold starts from the same weights" is checkable in results."""
    digest = hashlib.sha256()
    for key, value in sorted(module.state_dict().items()):
        digest.update(f"{key}:{value.dtype}:{tuple(value.shape)}".encode())
        tensor = value.detach().cpu().contiguous().reshape(-1)
        digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


def to_input(imgs: np.ndarray | torch.Tensor, input_px: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """uint8 patches (N, P, P, 3) -> normalised float (N, 3, input_px, input_px) on `device`."""
    x = torch.as_tensor(imgs).to(device)
    x = x.permute(0, 3, 1, 2).float().div_(255.0)
    if x.shape[-1] != input_px or x.shape[-2] != input_px:
        x = torch.nn.functional.interpolate(x, size=(input_px, input_px), mode="bilinear", antialias=True,
                                            align_corners=False)
    mean = torch.tensor(IMAGENET_MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std


def autocast(device: torch.device | str) -> contextlib.AbstractContextManager[Any]:
    """bf16 autocast on CUDA; plain fp32 elsewhere (CPU bf16 is slow and would break bit-exact resume tests)."""
    if torch.device(device).type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def select_device(preference: str = "auto", resources: Any = None) -> torch.device:
    """auto -> CUDA when present, else CPU; a job meant for a GPU without one fails (msamil.util.device)."""
    from msamil.util.device import select_device as _select

    return _select(preference, resources)
