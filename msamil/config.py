"""Config helpers that several stages share: physical scales, per-method settings, and how a run's config is
resolved from config files (README "Configuration")."""

from __future__ import annotations

import copy
import hashlib
import json
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

SCALES = ("20x", "10x", "5x")
SCALE_FACTOR = {"20x": 1, "10x": 2, "5x": 4}  # physical size relative to 20x; exact, so grids nest
WEIGHTS_CACHE = "resources/weights"  # default model.weights_cache (msamil.models.weights)


# Top-level keys that the last source naming them sets exactly (not merged key by key): a user config that lists
# its methods gets exactly those methods.
REPLACED_KEYS = ("methods",)


def replaced_sections(configfiles: Sequence[str | os.PathLike[str]],
                      cli_config: Mapping[str, Any] | None) -> dict[str, Any]:
    """{key: value} for REPLACED_KEYS, taken from the last config file naming the key, or from --config.

    Snakemake merges config files and --config key by key, so a later file listing two methods would still run
    every method of the earlier one; the Snakefile sets these keys back to what the last source says.
    """
    import yaml

    out: dict[str, Any] = {}
    for path in configfiles or ():
        data = yaml.safe_load(Path(path).read_text()) or {}
        out.update({k: copy.deepcopy(data[k]) for k in REPLACED_KEYS if k in data})
    out.update({k: copy.deepcopy(cli_config[k]) for k in REPLACED_KEYS if cli_config and k in cli_config})
    return out


def dump_config(config: Mapping[str, Any], path: str | os.PathLike[str] | None) -> None:
    """Write the resolved config as JSON to `path` (no-op when None): the Snakefile's MSAMIL_DUMP_CONFIG hook."""
    if path:
        Path(path).write_text(json.dumps(config, indent=1, sort_keys=True, default=str) + "\n")


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


def weights_key(model_cfg: Mapping[str, Any]) -> str:
    """File stem of a backbone's cached weights: its name made path-safe, plus a hash of its kwargs if any."""
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", str(model_cfg["backbone"])).strip("_")
    kwargs = model_cfg.get("backbone_kwargs") or {}
    if not kwargs:
        return name
    digest = hashlib.sha256(json.dumps(kwargs, sort_keys=True, default=str).encode()).hexdigest()[:10]
    return f"{name}-{digest}"


def cached_weights(model_cfg: Mapping[str, Any]) -> Path | None:
    """Where msamil.models.weights.fetch_weights puts this backbone's weights; None when none are needed
    (random init, or a `pretrained_path` given). Torch-free: the Snakefile plans the fetch with it."""
    if not model_cfg.get("pretrained") or model_cfg.get("pretrained_path"):
        return None
    return Path(model_cfg.get("weights_cache") or WEIGHTS_CACHE) / f"{weights_key(model_cfg)}.pt"
