"""The timm patch backbone shared by MsaMIL-Net and every baseline, so all methods start from the same weights."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def create_backbone(model_cfg: dict[str, Any], seed: int | None = None) -> nn.Module:
    """A timm model returning its last feature map (B, C, h, w); `num_features` gives C.

    Weights: random (seeded) unless `pretrained` is true. Then they come from a local file, never the network
    (compute nodes are often offline): `pretrained_path` if given, else the cache that the local rule
    `fetch_weights` filled on the submitting machine (msamil.models.weights).
    """
    import timm

    from msamil.models.weights import architecture, backbone_kwargs, load_weights, weights_file

    if seed is not None:
        torch.manual_seed(seed)
    path = weights_file(model_cfg)
    name, extra = architecture(model_cfg)
    model = timm.create_model(name, pretrained=False, num_classes=0, global_pool="",
                              **{**extra, **backbone_kwargs(model_cfg)})
    if path is not None:
        load_weights(model, path, str(model_cfg["backbone"]))
    return model


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


def select_device(preference: str = "auto", resources: Any = None) -> torch.device:
    """auto -> CUDA when present, else CPU; a job meant for a GPU without one fails (msamil.util.device)."""
    from msamil.util.device import select_device as _select

    return _select(preference, resources)
