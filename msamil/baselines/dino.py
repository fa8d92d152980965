"""DINO self-distillation (Caron et al. 2021) of the patch backbone on the fold's training patches.

Student and teacher share one architecture (pooled backbone + DINO head); the teacher gets no gradients and is the
EMA of the student (cosine momentum schedule to 1). What keeps it from collapsing: centering of the teacher output
(momentum 0.9), sharpening with a low teacher temperature (warmed up per iteration), and the frozen last layer in
the first epoch. Multi-crop: 2 global crops (the backbone's input size) seen by both networks and n local crops
(scaled from DINO's 96/224 ratio) seen by the student only, with DINO's full augmentation set
(msamil.baselines.augment.DINO_VIEWS: colour jitter, grayscale, blur 1.0 / 0.1 + solarisation / 0.5). After pretraining the *teacher* backbone embeds the
patches for ABMIL, as in the DINO repository's downstream evaluation.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from msamil.baselines.augment import DINO_VIEWS, dino_view, to_unit
from msamil.baselines.features import PooledBackbone, Throughput, autocast
from msamil.baselines.sampling import PatchSampler

log = logging.getLogger(__name__)

DINO_DEFAULTS: dict[str, Any] = {
    "epochs": 10, "batch_size": 64, "patches_per_epoch": None, "out_dim": 4096, "head_hidden": 2048,
    "bottleneck": 256, "n_local_crops": 6, "local_px": None, "global_scale": [0.4, 1.0],
    "local_scale": [0.05, 0.4], "teacher_temp": [0.04, 0.07], "warmup_teacher_temp_epochs": 1.0,
    "student_temp": 0.1, "momentum": [0.996, 1.0], "center_momentum": 0.9, "lr": 5e-4, "min_lr": 1e-6,
    "warmup_epochs": 1.0, "weight_decay": [0.04, 0.4], "clip_grad": 3.0, "freeze_last_layer": 1,
    "colour_jitter": 0.4, "hue_jitter": 0.0, "blur_sigma": [0.1, 2.0],
}


def dino_config(cfg: Mapping[str, Any] | None) -> dict[str, Any]:
    """Config section `baselines.dino` over the defaults."""
    out = dict(DINO_DEFAULTS)
    out.update({k: v for k, v in (cfg or {}).items() if v is not None or k in ("patches_per_epoch", "local_px")})
    return out


class DINOHead(nn.Module):
    """MLP (GELU) -> L2-normalised bottleneck -> weight-normalised linear layer to K (gain fixed at 1, no bias).

    The fixed gain (DINO's `norm_last_layer=True`) makes the logits cosine similarities, which is the stable choice.
    """

    def __init__(self, in_dim: int, out_dim: int, hidden: int = 2048, bottleneck: int = 256) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(in_dim, hidden), nn.GELU(), nn.Linear(hidden, hidden), nn.GELU(),
                                 nn.Linear(hidden, bottleneck))
        for m in self.mlp:
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
        self.last_layer = nn.Parameter(torch.empty(out_dim, bottleneck))
        nn.init.trunc_normal_(self.last_layer, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = F.normalize(self.mlp(x), dim=-1)
        return z @ F.normalize(self.last_layer, dim=1).t()


class DINONet(nn.Module):
    """Pooled backbone + DINO head; crops of one resolution go through the backbone as one batch."""

    def __init__(self, backbone: nn.Module, out_dim: int, hidden: int, bottleneck: int) -> None:
        super().__init__()
        self.embedder = PooledBackbone(backbone)
        self.head = DINOHead(self.embedder.num_features, out_dim, hidden, bottleneck)

    def forward(self, crops: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        outs: list[torch.Tensor] = []
        i = 0
        while i < len(crops):  # consecutive crops of equal size share one forward pass
            j = i
            while j < len(crops) and crops[j].shape[-1] == crops[i].shape[-1]:
                j += 1
            out = self.head(self.embedder(torch.cat(list(crops[i:j]))))
            outs += list(out.float().chunk(j - i))
            i = j
        return outs


def cosine_schedule(base: float, final: float, total: int, warmup: int = 0, warmup_start: float = 0.0) -> np.ndarray:
    """Per-iteration values: linear warm-up from `warmup_start` to `base`, then cosine from `base` to `final`."""
    warm = np.linspace(warmup_start, base, warmup, endpoint=False) if warmup > 0 else np.zeros(0)
    steps = np.arange(max(total - warmup, 0))
    cos = final + 0.5 * (base - final) * (1 + np.cos(np.pi * steps / max(len(steps), 1)))
    return np.concatenate([warm, cos])[:total]


def teacher_temp_schedule(start: float, end: float, warmup: int, total: int) -> np.ndarray:
    """Linear teacher-temperature warm-up, indexed by iteration (short runs have few epochs)."""
    warm = np.linspace(start, end, warmup) if warmup > 0 else np.zeros(0)
    return np.concatenate([warm, np.full(max(total - warmup, 0), end)])[:total]


class DINOLoss(nn.Module):
    """Cross-entropy between the centred, sharpened teacher on each global crop and the student on every other crop."""

    def __init__(self, out_dim: int, student_temp: float = 0.1, center_momentum: float = 0.9) -> None:
        super().__init__()
        self.student_temp = student_temp
        self.center_momentum = center_momentum
        self.register_buffer("center", torch.zeros(1, out_dim))

    def forward(self, student_out: Sequence[torch.Tensor], teacher_out: Sequence[torch.Tensor],
                teacher_temp: float) -> tuple[torch.Tensor, torch.Tensor]:
        """(loss, teacher probabilities of the global crops (2B, K)); updates the centre after the loss."""
        t_probs = [torch.softmax((t.detach() - self.center) / teacher_temp, dim=-1) for t in teacher_out]
        s_logp = [torch.log_softmax(s / self.student_temp, dim=-1) for s in student_out]
        total, pairs = student_out[0].new_zeros(()), 0
        for iq, q in enumerate(t_probs):
            for iv, lp in enumerate(s_logp):
                if iv == iq:
                    continue
                total = total + torch.sum(-q * lp, dim=-1).mean()
                pairs += 1
        self.update_center(torch.cat([t.detach() for t in teacher_out]))
        return total / pairs, torch.cat(t_probs)

    @torch.no_grad()
    def update_center(self, teacher_raw: torch.Tensor) -> None:
        self.center.mul_(self.center_momentum).add_(teacher_raw.mean(0, keepdim=True),
                                                    alpha=1 - self.center_momentum)


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, momentum: float) -> None:
    """theta_t <- m theta_t + (1 - m) theta_s over parameters (buffers are not averaged, as in DINO)."""
    for pt, ps in zip(teacher.parameters(), student.parameters(), strict=True):
        pt.mul_(momentum).add_(ps.detach(), alpha=1 - momentum)


def _param_groups(model: nn.Module) -> list[dict[str, Any]]:
    """Weight decay on weight matrices only; biases and norm parameters (1-D) are not decayed."""
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim <= 1]
    return [{"params": decay}, {"params": no_decay, "weight_decay": 0.0}]


def clip_per_tensor(model: nn.Module, clip: float) -> None:
    """DINO clips each parameter tensor's gradient norm separately, not the global norm."""
    for p in model.parameters():
        if p.grad is not None:
            norm = p.grad.norm()
            coef = clip / (norm + 1e-6)
            if coef < 1:
                p.grad.mul_(coef)


def entropy(p: torch.Tensor) -> torch.Tensor:
    return -(p * torch.log(p.clamp_min(1e-12))).sum(-1)


@dataclass
class DINOResult:
    """The pretrained networks, the per-iteration history (the loss curve) and per-epoch throughput."""

    teacher: DINONet
    student: DINONet
    history: list[dict[str, float]] = field(default_factory=list)
    epochs: list[dict[str, float]] = field(default_factory=list)
    seen_slides: set[str] = field(default_factory=set)


def local_crop_px(input_px: int, local_px: int | None) -> int:
    """DINO uses 96 px local crops for 224 px global ones; keep that ratio at our (often tiny) input size."""
    if local_px:
        return int(local_px)
    return max(16, int(round(input_px * 96 / 224 / 4)) * 4)


def dino_pretrain(backbone: nn.Module, sampler: PatchSampler, *, input_px: int,
                  cfg: Mapping[str, Any] | None = None, seed: int = 0,
                  device: torch.device | str = "cpu") -> DINOResult:
    """Pretrain `backbone` (modified in place as the student) with DINO on patches drawn from `sampler`.

    An epoch is `patches_per_epoch` patches (all of the sampler's patches when null), so the schedules, which are
    per iteration, stay meaningful for the tiny demo and for large cohorts alike.
    """
    cfg = dino_config(cfg)
    device = torch.device(device)
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    bs = int(cfg["batch_size"])
    per_epoch = int(cfg["patches_per_epoch"] or sampler.n_patches)
    ipe = max(1, math.ceil(per_epoch / bs))
    epochs = int(cfg["epochs"])
    total = ipe * epochs
    out_dim = int(cfg["out_dim"])

    student = DINONet(backbone, out_dim, int(cfg["head_hidden"]), int(cfg["bottleneck"])).to(device)
    teacher = copy.deepcopy(student)
    for p in teacher.parameters():
        p.requires_grad_(False)
    loss_fn = DINOLoss(out_dim, float(cfg["student_temp"]), float(cfg["center_momentum"])).to(device)
    opt = torch.optim.AdamW(_param_groups(student), lr=0.0)
    lr_sched = cosine_schedule(float(cfg["lr"]) * bs / 256, float(cfg["min_lr"]), total,
                               warmup=min(total, int(round(float(cfg["warmup_epochs"]) * ipe))))
    wd_sched = cosine_schedule(float(cfg["weight_decay"][0]), float(cfg["weight_decay"][1]), total)
    mom_sched = cosine_schedule(float(cfg["momentum"][0]), float(cfg["momentum"][1]), total)
    tt_sched = teacher_temp_schedule(float(cfg["teacher_temp"][0]), float(cfg["teacher_temp"][1]),
                                     min(total, int(round(float(cfg["warmup_teacher_temp_epochs"]) * ipe))), total)
    n_local = int(cfg["n_local_crops"])
    lpx = local_crop_px(input_px, cfg["local_px"])
    result = DINOResult(teacher=teacher, student=student)
    student.train()
    teacher.train()  # BN uses batch statistics and keeps its own running stats for the later eval-mode extraction
    it = 0
    for epoch in range(epochs):
        tp = Throughput()
        start = time.perf_counter()
        for _ in tqdm(range(ipe), desc=f"dino epoch {epoch}", unit="it"):
            imgs, _slides = sampler.batch(bs)
            x = to_unit(imgs, input_px, device)
            globals_ = [dino_view(x, input_px, cfg["global_scale"], DINO_VIEWS[v], gen, cfg)
                        for v in ("global1", "global2")]
            locals_ = [dino_view(x, lpx, cfg["local_scale"], DINO_VIEWS["local"], gen, cfg) for _ in range(n_local)]
            for g in opt.param_groups:
                g["lr"] = lr_sched[it]
            opt.param_groups[0]["weight_decay"] = wd_sched[it]
            with autocast(device):
                with torch.no_grad():
                    t_out = teacher(globals_)
                s_out = student(globals_ + locals_)
            loss, t_probs = loss_fn(s_out, t_out, float(tt_sched[it]))
            if not torch.isfinite(loss):
                raise FloatingPointError(f"DINO loss is {loss.item()} at iteration {it}; lower baselines.dino.lr")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            clip_per_tensor(student, float(cfg["clip_grad"]))
            if epoch < int(cfg["freeze_last_layer"]):
                student.head.last_layer.grad = None
            opt.step()
            ema_update(teacher, student, float(mom_sched[it]))
            with torch.no_grad():
                result.history.append({
                    "epoch": epoch, "iter": it, "loss": loss.item(), "lr": float(lr_sched[it]),
                    "weight_decay": float(wd_sched[it]), "momentum": float(mom_sched[it]),
                    "teacher_temp": float(tt_sched[it]), "teacher_entropy": entropy(t_probs).mean().item(),
                    "teacher_marginal_entropy": entropy(t_probs.mean(0)).item(),
                })
            tp.add(len(imgs), 0.0)
            it += 1
        if device.type == "cuda":
            torch.cuda.synchronize()
        tp.wall_s = time.perf_counter() - start
        epoch_losses = [h["loss"] for h in result.history if h["epoch"] == epoch]
        result.epochs.append({"epoch": epoch, "loss": float(np.mean(epoch_losses)), **tp.as_dict(),
                              "crops_per_patch": 2 + n_local})
        log.info("dino epoch %d: loss %.4f, %s", epoch, np.mean(epoch_losses), tp.as_dict())
    result.seen_slides = set(sampler.seen)
    return result
