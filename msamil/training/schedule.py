"""Learning-rate schedule: linear warm-up then cosine decay, stepped once per optimizer step.

A callable object (not a lambda) so LambdaLR's state_dict round-trips it and a resumed run continues the curve.
"""

from __future__ import annotations

import math

import torch


class WarmupCosine:
    """Multiplier for the base LR at optimizer step `step`: ramps over `warmup` steps, then decays to `floor`."""

    def __init__(self, total: int, warmup: int, floor: float = 0.0) -> None:
        self.total = max(1, int(total))
        self.warmup = max(0, min(int(warmup), self.total - 1))
        self.floor = float(floor)

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / (self.warmup + 1)
        progress = min(1.0, (step - self.warmup) / max(1, self.total - self.warmup))
        return self.floor + (1.0 - self.floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def warmup_cosine(optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int,
                  floor: float = 0.0) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(optimizer, WarmupCosine(total_steps, warmup_steps, floor))
