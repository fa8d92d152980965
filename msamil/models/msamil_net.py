"""MsaMIL-Net = MSFEM (shared patch encoder) + IAAM (multi-scale fusion) + a linear head, trained end to end.

`embed` runs the backbone in micro-batches, each under activation checkpointing when gradients are needed, so
training memory is bounded by one micro-batch of backbone activations plus N embeddings, whatever the bag size.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from msamil.models.iaam import IAAM
from msamil.models.msfem import MSFEM


class MsaMILNet(nn.Module):
    """Slide classifier. Switches: `mhe` (MHE blocks on/off), `pooling` ("dmq" | "gated"), `freeze_backbone`
    (two-stage ablation: the backbone never gets gradients and stays in eval mode).

    `seed` fixes the backbone's random weights alone (the fold's shared "backbone" stream, msamil.util.seeding);
    every other module draws from the global torch generator, which the trainer seeds per (seed, fold)."""

    def __init__(self, model_cfg: dict[str, Any], n_classes: int, scales: Sequence[str] = ("20x", "10x", "5x"),
                 mhe: bool = True, pooling: str = "dmq", freeze_backbone: bool = False,
                 seed: int | None = None) -> None:
        super().__init__()
        dim = int(model_cfg["dim"])
        dropout = float(model_cfg.get("dropout", 0.0))
        self.scales = list(scales)
        self.freeze_backbone = freeze_backbone
        self.msfem = MSFEM(model_cfg, seed=seed)
        self.iaam = IAAM(dim, int(model_cfg["mhe_layers"]), int(model_cfg["mhe_heads"]), int(model_cfg["mhe_rank"]),
                         int(model_cfg["n_queries"]), dropout=dropout, mhe=mhe, pooling=pooling)
        # LayerNorm first: Eq. 8's ungated sum of up to n_queries LayerNorm'd vectors has a norm growing with
        # n_queries, which gave overconfident logits at initialisation (INFERRED; the paper gives no head).
        self.head = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, n_classes))
        if freeze_backbone:
            self.msfem.backbone.requires_grad_(False)
        self.frozen_bn = False

    def train(self, mode: bool = True) -> MsaMILNet:
        """Keep a frozen backbone in eval mode, and BatchNorm statistics fixed when `frozen_bn` is set."""
        super().train(mode)
        if mode and self.freeze_backbone:
            self.msfem.backbone.eval()
        elif mode and self.frozen_bn:
            for m in self.msfem.backbone.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()
        return self

    def embed_batch(self, x: torch.Tensor, checkpointed: bool = False,
                    prepare: Callable[[torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
        """One micro-batch -> (B, d). `prepare` (e.g. uint8 -> normalised float on the device) runs inside the
        checkpoint, so only the small uint8 micro-batch is kept for the backward recomputation."""
        prep = prepare or _identity
        if self.freeze_backbone:
            with torch.no_grad():
                fmap = self.msfem.backbone(prep(x))
            if checkpointed:
                return checkpoint(self.msfem.head, fmap, use_reentrant=False)
            return self.msfem.head(fmap)
        if checkpointed:
            return checkpoint(_encode, self.msfem, prep, x, use_reentrant=False)
        return self.msfem(prep(x))

    def embed(self, x: torch.Tensor, micro_batch: int | None = None, checkpointing: bool = False,
              prepare: Callable[[torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
        """Images (N, ...) -> embeddings (N, d), `micro_batch` images at a time (checkpointed when training)."""
        # Near-equal chunks of at most `micro_batch` (9 -> 3+3+3, not 4+4+1): a lone patch would break
        # BatchNorm's batch statistics, and equal chunks keep per-chunk cost even.
        # The last chunk is never checkpointed: autograd runs it backward first (newest nodes first), freeing its
        # activations before any other chunk is recomputed, so peak memory is unchanged and one recompute saved.
        n_chunks = -(-len(x) // (micro_batch or len(x) or 1))
        use_ckpt = checkpointing and torch.is_grad_enabled() and self.training
        parts = torch.tensor_split(x, n_chunks)
        return torch.cat([self.embed_batch(part, use_ckpt and i < len(parts) - 1, prepare)
                          for i, part in enumerate(parts)])

    def aggregate(self, emb: torch.Tensor, coords: torch.Tensor, scale_idx: torch.Tensor,
                  extent: tuple[float, float] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Embeddings of one bag -> (logits (C,), attention (N,) in input order)."""
        if extent is None:  # no slide size given: normalise by the bag's own extent
            extent = tuple(float(v) for v in coords.max(dim=0).values.clamp(min=1))
        bag, attn = self.iaam(emb, coords, scale_idx, extent)
        return self.head(bag), attn

    def forward(self, x: torch.Tensor, coords: torch.Tensor, scale_idx: torch.Tensor,
                extent: tuple[float, float] | None = None, micro_batch: int | None = None,
                checkpointing: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """One bag: images (N, 3, H, W), level-0 coords (N, 2), scale index (N,) -> (logits (C,), attention (N,))."""
        return self.aggregate(self.embed(x, micro_batch, checkpointing), coords, scale_idx, extent)


def build_model(settings: dict[str, Any], n_classes: int, seed: int | None = None) -> MsaMILNet:
    """The model of one method from `msamil.config.method_settings` output."""
    return MsaMILNet(settings["model"], n_classes, scales=settings["scales"], mhe=settings["mhe"],
                     pooling=settings["pooling"], freeze_backbone=settings["freeze_backbone"], seed=seed)


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


def _encode(msfem: MSFEM, prepare: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    return msfem(prepare(x))
