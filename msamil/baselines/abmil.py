"""Gated attention MIL (Ilse, Tomczak, Welling 2018) on frozen patch features, shared by all three baselines.

One head class and one training loop serve `abmil`, `dino_abmil` and `icmil_abmil`, so the baselines differ only in
the features they are given. The head is written as projection `fc` -> gated attention -> `classifier` so that
ICMIL can apply `classifier(fc(h))` to a single instance: with one instance the attention weight is exactly 1 and
the bag prediction *is* the instance prediction (`instance_logits`).
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from msamil.training.metrics import classification_metrics

log = logging.getLogger(__name__)

ABMIL_DEFAULTS: dict[str, Any] = {
    "epochs": 20, "lr": 2e-4, "weight_decay": 1e-4, "hidden": 512, "attn_dim": 128, "dropout": 0.25,
    "clip_grad": 5.0, "max_instances": None,
}


class GatedABMIL(nn.Module):
    """fc (Linear + ReLU + dropout) -> gated attention a_i -> bag z = sum_i a_i fc(h_i) -> linear classifier."""

    def __init__(self, in_dim: int, n_classes: int, hidden: int = 512, attn_dim: int = 128,
                 dropout: float = 0.25) -> None:
        super().__init__()
        self.fc = nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(), nn.Dropout(dropout))
        self.attn_v = nn.Linear(hidden, attn_dim)
        self.attn_u = nn.Linear(hidden, attn_dim)
        self.attn_w = nn.Linear(attn_dim, 1)
        self.classifier = nn.Linear(hidden, n_classes)

    def attention_scores(self, m: torch.Tensor) -> torch.Tensor:
        """Raw (pre-softmax) gated attention logits of projected instances m (N, hidden) -> (N,)."""
        return self.attn_w(torch.tanh(self.attn_v(m)) * torch.sigmoid(self.attn_u(m))).squeeze(-1)

    def forward(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Instance features h (N, in_dim) -> (bag logits (C,), attention weights (N,) summing to 1)."""
        m = self.fc(h)
        att = torch.softmax(self.attention_scores(m), dim=0)
        return self.classifier(att @ m), att

    def instance_logits(self, h: torch.Tensor) -> torch.Tensor:
        """The bag head applied to each instance alone (N, C): ICMIL's instance-level teacher."""
        return self.classifier(self.fc(h))


@dataclass
class ABMILResult:
    """The model with the best validation score, and one history row per epoch."""

    model: GatedABMIL
    history: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int = -1


def abmil_config(cfg: Mapping[str, Any] | None) -> dict[str, Any]:
    """Config section `baselines.abmil` over the defaults (missing keys keep the reference values)."""
    out = dict(ABMIL_DEFAULTS)
    out.update({k: v for k, v in (cfg or {}).items() if v is not None or k == "max_instances"})
    return out


def _as_tensor(feats: np.ndarray | torch.Tensor, device: torch.device) -> torch.Tensor:
    return torch.as_tensor(np.asarray(feats, dtype=np.float32) if isinstance(feats, np.ndarray) else feats,
                           dtype=torch.float32, device=device)


@torch.no_grad()
def predict_abmil(model: GatedABMIL, bags: Sequence[np.ndarray | torch.Tensor],
                  device: torch.device | str = "cpu") -> tuple[np.ndarray, list[np.ndarray]]:
    """Class probabilities (n_bags, C) and each bag's attention weights (all instances, no sampling)."""
    device = torch.device(device)
    model.eval().to(device)
    probs, atts = [], []
    for feats in bags:
        logits, att = model(_as_tensor(feats, device))
        probs.append(torch.softmax(logits.float(), dim=-1).cpu().numpy())
        atts.append(att.float().cpu().numpy())
    return np.stack(probs) if probs else np.zeros((0, model.classifier.out_features)), atts


def _evaluate(model: GatedABMIL, bags: Sequence[np.ndarray], labels: np.ndarray,
              device: torch.device) -> tuple[float, float]:
    """(validation loss, validation AUC); AUC is NaN when the set holds a single class."""
    if len(bags) == 0:
        return float("nan"), float("nan")
    probs, _ = predict_abmil(model, bags, device)
    eps = 1e-7
    loss = float(-np.mean(np.log(np.clip(probs[np.arange(len(labels)), labels], eps, 1.0))))
    return loss, classification_metrics(labels, probs)["auc"]


def _selection_key(val_auc: float, val_loss: float) -> tuple[float, float]:
    """Best by validation AUC, ties (frequent with few validation slides) broken by the lower validation loss."""
    auc = -np.inf if np.isnan(val_auc) else val_auc
    loss = np.inf if np.isnan(val_loss) else val_loss
    return (auc, -loss)


def train_abmil(train_bags: Sequence[np.ndarray], train_labels: Sequence[int],
                val_bags: Sequence[np.ndarray], val_labels: Sequence[int], *, n_classes: int,
                cfg: Mapping[str, Any] | None = None, seed: int = 0,
                device: torch.device | str = "cpu") -> ABMILResult:
    """Train a gated ABMIL head, one bag per step (Adam, weight decay, gradient-norm clipping).

    Keeps the epoch with the best validation AUC, as the reference code does; only `train_bags` ever produce
    gradients and only `val_bags` take part in model selection, so the caller decides what the model may see.
    """
    cfg = abmil_config(cfg)
    device = torch.device(device)
    if not train_bags:
        raise ValueError("train_abmil: no training bags")
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    in_dim = int(np.asarray(train_bags[0]).shape[1])
    model = GatedABMIL(in_dim, n_classes, hidden=int(cfg["hidden"]), attn_dim=int(cfg["attn_dim"]),
                       dropout=float(cfg["dropout"])).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=float(cfg["lr"]), weight_decay=float(cfg["weight_decay"]))
    loss_fn = nn.CrossEntropyLoss()
    train_t = [_as_tensor(b, device) for b in train_bags]
    y_train = torch.as_tensor(np.asarray(train_labels, dtype=np.int64), device=device)
    y_val = np.asarray(val_labels, dtype=np.int64)
    max_inst = cfg.get("max_instances")
    result = ABMILResult(model=copy.deepcopy(model))
    best_key: tuple[float, float] | None = None
    for epoch in range(int(cfg["epochs"])):
        model.train()
        losses = []
        for i in rng.permutation(len(train_t)):
            feats = train_t[i]
            if max_inst and feats.shape[0] > max_inst:
                feats = feats[torch.as_tensor(rng.choice(feats.shape[0], int(max_inst), replace=False),
                                              device=device)]
            logits, _ = model(feats)
            loss = loss_fn(logits.unsqueeze(0), y_train[i:i + 1])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), float(cfg["clip_grad"]))
            opt.step()
            losses.append(loss.item())
        val_loss, val_auc = _evaluate(model, val_bags, y_val, device)
        result.history.append({"epoch": epoch, "train_loss": float(np.mean(losses)), "val_loss": val_loss,
                               "val_auc": val_auc})
        key = _selection_key(val_auc, val_loss)
        if best_key is None or key > best_key:
            best_key = key
            result.model = copy.deepcopy(model).eval()
            result.best_epoch = epoch
        log.info("abmil epoch %d: train_loss %.4f val_loss %.4f val_auc %.4f", epoch, np.mean(losses),
                 val_loss, val_auc)
    return result
