"""Config helpers that several stages share: physical scales and per-method settings."""

from __future__ import annotations

import copy
from typing import Any

SCALES = ("20x", "10x", "5x")
SCALE_FACTOR = {"20x": 1, "10x": 2, "5x": 4}  # physical size relative to 20x; exact, so grids nest


def scale_mpp(scale: str, mpp_20x: float = 0.5) -> float:
    """Target µm/px of a named scale: 20x := mpp_20x, 10x := 2x that, 5x := 4x that."""
    return SCALE_FACTOR[scale] * mpp_20x


def method_settings(config: dict[str, Any], method: str) -> dict[str, Any]:
    """The effective settings of one method: its switches plus the model/train sections with its overrides."""
    spec = dict(config["methods"][method])
    out = {
        "name": method,
        "kind": spec.pop("kind"),
        "scales": spec.pop("scales", list(config.get("scales", SCALES))),
        "sffm": spec.pop("sffm", True),
        "mhe": spec.pop("mhe", True),
        "pooling": spec.pop("pooling", "dmq"),
        "freeze_backbone": spec.pop("freeze_backbone", False),
    }
    out["model"] = {**copy.deepcopy(config.get("model", {})), **spec.pop("model", {})}
    out["train"] = {**copy.deepcopy(config.get("train", {})), **spec.pop("train", {})}
    return out
