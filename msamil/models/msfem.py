"""MSFEM: one patch encoder shared by every scale (paper §5.2), so features of 20x/10x/5x live in one space.

timm backbone -> last feature map (B, C, h, w) -> h*w tokens -> Linear(C, d) -> learned position embedding + CLS
-> Transformer encoder -> the CLS output is the d-dimensional patch embedding.

Any timm backbone: a CNN gives a map (B, C, h, w) (channels-last maps (B, h, w, C) are turned round), a ViT gives
tokens (B, T, C) whose first `num_prefix_tokens` are its CLS/register tokens and the rest a square grid of patch
tokens. The grid tokens take the map's place; the prefix tokens (a foundation model's own summary of the patch)
join the sequence after MSFEM's CLS, projected but without a position.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from msamil.models.backbone import create_backbone


def split_tokens(out: torch.Tensor, n_prefix: int, channels: int) -> tuple[torch.Tensor, torch.Tensor, int, int]:
    """A backbone output -> (prefix tokens (B, p, C), grid tokens (B, h*w, C), h, w), for CNN maps and ViT tokens."""
    if out.ndim == 4:
        if out.shape[1] != channels and out.shape[-1] == channels:  # NHWC (e.g. Swin, ConvNeXt-style outputs)
            out = out.permute(0, 3, 1, 2)
        b, c, h, w = out.shape
        return out.new_zeros(b, 0, c), out.flatten(2).transpose(1, 2), h, w
    if out.ndim != 3:
        raise ValueError(f"backbone output of shape {tuple(out.shape)}: expected a map (B, C, h, w) or tokens (B, T, C)")
    grid = out[:, n_prefix:]
    side = math.isqrt(grid.shape[1])
    if side * side != grid.shape[1]:
        raise ValueError(f"{grid.shape[1]} patch tokens after {n_prefix} prefix tokens do not form a square grid; "
                         "is num_prefix_tokens right for this backbone?")
    return out[:, :n_prefix], grid, side, side


def _feature_grid(backbone: nn.Module, input_px: int) -> int:
    """Side of the backbone's last feature map at `input_px`, from timm's declared reduction (no dummy forward)."""
    info = getattr(backbone, "feature_info", None)
    reduction = 32
    if info:
        last = info[-1] if isinstance(info, list) else info.get_dicts()[-1]
        reduction = int(last.get("reduction", 32))
    return max(1, math.ceil(input_px / reduction))


class MSFEM(nn.Module):
    """Patch images (B, 3, H, W) -> embeddings (B, d).

    The position embedding is learned on the grid the configured `input_px` gives and bilinearly resized when a
    feature map of another size arrives, so the module accepts any input size. With `token_layers: 0` there is
    no encoder to fill the CLS token, so the embedding is the mean of the projected tokens instead.
    """

    def __init__(self, model_cfg: dict[str, Any], seed: int | None = None) -> None:
        super().__init__()
        dim = int(model_cfg["dim"])
        self.backbone = create_backbone(model_cfg, seed=seed)
        channels = int(self.backbone.num_features)
        self.grid = _feature_grid(self.backbone, int(model_cfg["input_px"]))
        self.proj = nn.Linear(channels, dim)
        self.pos = nn.Parameter(torch.zeros(1, self.grid * self.grid, dim))
        self.cls = nn.Parameter(torch.zeros(1, 1, dim))
        nn.init.trunc_normal_(self.pos, std=0.02)
        nn.init.trunc_normal_(self.cls, std=0.02)
        layers = int(model_cfg.get("token_layers", 1))
        self.encoder: nn.TransformerEncoder | None = None
        if layers > 0:
            layer = nn.TransformerEncoderLayer(dim, int(model_cfg["token_heads"]), dim_feedforward=4 * dim,
                                               dropout=float(model_cfg.get("dropout", 0.0)), activation="gelu",
                                               batch_first=True, norm_first=True)
            self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)
        self.dim = dim
        self.channels = channels
        self.n_prefix = int(getattr(self.backbone, "num_prefix_tokens", 0) or 0)

    def _pos_for(self, h: int, w: int) -> torch.Tensor:
        if h == self.grid and w == self.grid:
            return self.pos
        grid = self.pos.reshape(1, self.grid, self.grid, -1).permute(0, 3, 1, 2)
        grid = F.interpolate(grid, size=(h, w), mode="bilinear", align_corners=False)
        return grid.permute(0, 2, 3, 1).reshape(1, h * w, -1)

    def head(self, fmap: torch.Tensor) -> torch.Tensor:
        """Backbone output (map or tokens) -> embedding (B, d); split from the backbone so a frozen backbone can
        run under no_grad while this part still trains."""
        prefix, grid, h, w = split_tokens(fmap, self.n_prefix, self.channels)
        tokens = self.proj(grid) + self._pos_for(h, w)
        if self.encoder is None:
            return self.norm(tokens.mean(dim=1))
        b = tokens.shape[0]
        seq = torch.cat([self.cls.expand(b, -1, -1), self.proj(prefix), tokens], dim=1)
        return self.norm(self.encoder(seq)[:, 0])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))
