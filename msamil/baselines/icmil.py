"""ICMIL embedder phase (Wang et al. 2023): the frozen bag head labels single patches to fine-tune the embedder.

Why it works: an ABMIL bag embedding is a convex combination of projected instance embeddings, so the bag head
applies to one instance as well; a bag of one instance has attention 1 and its bag prediction *is*
`classifier(fc(h))` (`instance_teacher`). Teacher: frozen copy of the embedder on the clean patch + the frozen bag
head. Student: the trainable embedder on an augmented view + trainable copies of `fc` and `classifier`, held close
to the teacher's by L_w1 and L_w2. Loss L = L_c + 0.5 L_w1 + 0.5 L_w2 with the reference code's "mean over all
elements" KL; optional confidence weights |2 minmax(att) - 1|^beta on L_c (the journal version). Patches come from
training slides only (stricter than the reference code, which also used its validation slides). The budget is a
fixed number of iterations; the last student is kept (the reference selects by teacher fidelity on tiles of the
same slides, which adds little).
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from msamil.baselines.abmil import GatedABMIL
from msamil.baselines.augment import normalize, random_geometry, to_unit
from msamil.baselines.features import PooledBackbone, Throughput, autocast
from msamil.baselines.sampling import PatchSampler

log = logging.getLogger(__name__)

ICMIL_DEFAULTS: dict[str, Any] = {
    "rounds": 1, "iters": 2000, "batch_size": 100, "lr": 1e-5, "weight_decay": 1e-4, "beta": 0.0,
    "crop_scale": [0.5, 1.0], "clip_grad": 5.0,
}


def icmil_config(cfg: Mapping[str, Any] | None) -> dict[str, Any]:
    """Config section `baselines.icmil` over the defaults."""
    out = dict(ICMIL_DEFAULTS)
    out.update({k: v for k, v in (cfg or {}).items() if v is not None})
    return out


def instance_teacher(head: GatedABMIL, z: torch.Tensor) -> torch.Tensor:
    """Logits of the bag head on each instance embedding alone (N, C); equals head(z[i:i+1]) for every i."""
    return head.instance_logits(z)


def mean_kl(target: torch.Tensor, pred: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """KL(target || pred) element-wise, averaged over all elements (as PyTorch KLDivLoss 'none' + mean).

    `weight` (N,) scales each instance's row before the mean (confidence-weighted L_c).
    """
    elem = target * (torch.log(target.clamp_min(1e-12)) - torch.log(pred.clamp_min(1e-12)))
    if weight is not None:
        elem = elem * weight.unsqueeze(-1)
    return elem.mean()


def confidence_weights(head: GatedABMIL, m: torch.Tensor, beta: float) -> torch.Tensor:
    """|2 minmax(s) - 1|^beta over the batch's raw attention logits s: extremes count, ambiguous patches do not."""
    s = head.attention_scores(m)
    s = (s - s.min()) / (s.max() - s.min()).clamp_min(1e-12)
    return (2 * s - 1).abs().pow(beta)


@dataclass
class ICMILResult:
    """The fine-tuned embedder, the per-iteration losses and the phase's throughput."""

    embedder: PooledBackbone
    history: list[dict[str, float]] = field(default_factory=list)
    throughput: Throughput = field(default_factory=Throughput)
    seen_slides: set[str] = field(default_factory=set)


def icmil_losses(g_t: nn.Module, head_t: GatedABMIL, g_s: nn.Module, head_s: GatedABMIL, x_clean: torch.Tensor,
                 x_aug: torch.Tensor, beta: float = 0.0) -> dict[str, torch.Tensor]:
    """L_c, L_w1, L_w2 and L = L_c + 0.5 L_w1 + 0.5 L_w2 for one batch (x normalised, teacher sees x_clean)."""
    with torch.no_grad():
        z_t = g_t(x_clean).float()
    z_s = g_s(x_aug).float()
    with torch.autocast(z_t.device.type, enabled=False):  # heads and KLs in float32 (backbones may be bf16)
        return _head_losses(head_t, head_s, z_t, z_s, beta)


def _head_losses(head_t: GatedABMIL, head_s: GatedABMIL, z_t: torch.Tensor, z_s: torch.Tensor,
                 beta: float) -> dict[str, torch.Tensor]:
    with torch.no_grad():
        m_t = head_t.fc(z_t)
        p_t = torch.softmax(head_t.classifier(m_t), dim=-1)
        weight = confidence_weights(head_t, m_t, beta) if beta > 0 else None
    p_s = torch.softmax(head_s.instance_logits(z_s), dim=-1)
    m_w = head_s.fc(z_t)
    p_w = torch.softmax(head_s.classifier(m_w), dim=-1)
    l_c = mean_kl(p_t, p_s, weight)
    l_w1 = mean_kl(p_t, p_w)
    l_w2 = mean_kl(torch.softmax(m_t, dim=-1), torch.softmax(m_w, dim=-1))
    return {"loss": l_c + 0.5 * l_w1 + 0.5 * l_w2, "l_c": l_c, "l_w1": l_w1, "l_w2": l_w2,
            "mae": (p_s.detach() - p_t).abs().mean()}


def icmil_finetune(embedder: PooledBackbone, head: GatedABMIL, sampler: PatchSampler, *, input_px: int,
                   cfg: Mapping[str, Any] | None = None, seed: int = 0,
                   device: torch.device | str = "cpu") -> ICMILResult:
    """One embedder phase: fine-tune `embedder` (in place, the student) for `iters` batches of training patches."""
    cfg = icmil_config(cfg)
    device = torch.device(device)
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    g_t = copy.deepcopy(embedder).to(device).eval()
    head_t = copy.deepcopy(head).to(device).eval()
    head_s = copy.deepcopy(head).to(device).eval()  # eval: no dropout in the student's projection
    for p in [*g_t.parameters(), *head_t.parameters()]:
        p.requires_grad_(False)
    for p in head_s.parameters():
        p.requires_grad_(True)
    g_s = embedder.to(device).train()  # BN in train mode, as in the reference student
    for p in g_s.parameters():
        p.requires_grad_(True)
    opt = torch.optim.Adam([*g_s.parameters(), *head_s.fc.parameters(), *head_s.classifier.parameters()],
                           lr=float(cfg["lr"]), weight_decay=float(cfg["weight_decay"]))
    result = ICMILResult(embedder=g_s)
    start = time.perf_counter()
    for it in tqdm(range(int(cfg["iters"])), desc="icmil fine-tune", unit="it"):
        imgs, _slides = sampler.batch(int(cfg["batch_size"]))
        x = to_unit(imgs, input_px, device)
        x_aug = normalize(random_geometry(x, input_px, cfg["crop_scale"], gen))
        with autocast(device):
            losses = icmil_losses(g_t, head_t, g_s, head_s, normalize(x), x_aug, float(cfg["beta"]))
        opt.zero_grad(set_to_none=True)
        losses["loss"].backward()
        nn.utils.clip_grad_norm_([*head_s.fc.parameters(), *head_s.classifier.parameters()],
                                 float(cfg["clip_grad"]))  # the reference does not clip the backbone
        opt.step()
        result.history.append({"iter": it, **{k: float(v.item()) for k, v in losses.items()}})
        result.throughput.add(len(imgs), 0.0)
    if device.type == "cuda":
        torch.cuda.synchronize()
    result.throughput.wall_s = time.perf_counter() - start
    result.seen_slides = set(sampler.seen)
    g_s.eval()
    if result.history:
        first, last = result.history[0], result.history[-1]
        log.info("icmil: loss %.5f -> %.5f, mae %.4f -> %.4f, %s", first["loss"], last["loss"], first["mae"],
                 last["mae"], result.throughput.as_dict())
    return result


def history_frame_rows(history: list[dict[str, float]], round_idx: int) -> list[dict[str, Any]]:
    """Rows for icmil_loss.tsv, tagged with the round."""
    return [{"round": round_idx, **row} for row in history]

