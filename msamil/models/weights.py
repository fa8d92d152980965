"""Pretrained backbone weights for offline compute nodes: fetched once, loaded from a local file by every job.

Compute nodes are often offline, so `pretrained: true` must never download inside a GPU job. The workflow's
local rule `fetch_weights` (rules/weights.smk) runs `fetch_weights` on the submitting machine and writes
`{model.weights_cache}/{weights_key}.pt`; `create_backbone` then builds the timm model without weights and loads
that file. A `pretrained_path` (a local file the user already has, e.g. a foundation model's checkpoint) wins over
the cache and needs no fetch at all.

The key covers the backbone name and its `backbone_kwargs`, since those can change weight shapes (a ViT's
position embedding at another `img_size` is resampled by timm when the weights are fetched).
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from msamil.config import cached_weights
from msamil.errors import ConfigError

_IMPORTABLE = ("timm.", "torch.")


def backbone_kwargs(model_cfg: Mapping[str, Any]) -> dict[str, Any]:
    """`model.backbone_kwargs` for timm.create_model. Values of `*_layer` keys may name a class by its dotted
    path (`mlp_layer: timm.layers.SwiGLUPacked`, `act_layer: torch.nn.SiLU`, as Virchow needs), since YAML
    cannot hold a class; only timm and torch objects are imported."""
    out = dict(model_cfg.get("backbone_kwargs") or {})
    for key, value in out.items():
        if key.endswith("_layer") and isinstance(value, str) and value.startswith(_IMPORTABLE):
            module, _, attr = value.rpartition(".")
            try:
                out[key] = getattr(importlib.import_module(module), attr)
            except (ImportError, AttributeError) as err:
                raise ConfigError(f"model.backbone_kwargs.{key}: cannot import {value!r} ({err})") from err
    return out


def weights_file(model_cfg: Mapping[str, Any]) -> Path | None:
    """The local file a job loads (pretrained_path, else the cache), or None for random weights. A missing file
    is a ConfigError naming the fix: a job never downloads."""
    if not model_cfg.get("pretrained"):
        return None
    given = model_cfg.get("pretrained_path")
    path = Path(given) if given else cached_weights(model_cfg)
    assert path is not None
    if not path.is_file():
        if given:
            raise ConfigError(f"model.pretrained_path {given} does not exist; point it at a local weights file")
        raise ConfigError(f"model.pretrained is true but {path} is missing; the workflow's local rule "
                          f"fetch_weights writes it on the submitting machine (`snakemake {path}`), or call "
                          "msamil.models.weights.fetch_weights on a machine with internet, or set "
                          "model.pretrained_path to a local file")
    return path


def load_weights(model: nn.Module, path: str | Path, name: str) -> None:
    """Load a state_dict (plain, or under `state_dict`/`model`) into `model`; most keys must match."""
    state = torch.load(Path(path), map_location="cpu", weights_only=True)
    if isinstance(state, dict):
        for key in ("state_dict", "model"):
            if isinstance(state.get(key), dict):
                state = state[key]
                break
    missing, _ = model.load_state_dict(state, strict=False)
    if len(missing) > len(model.state_dict()) // 2:
        raise ConfigError(f"weights {path}: most backbone weights are missing ({len(missing)}, e.g. "
                          f"{sorted(missing)[:3]}); is it a checkpoint of {name!r} with these backbone_kwargs?")


def architecture(model_cfg: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    """(timm name, extra create_model kwargs) a job builds offline. An `hf-hub:` name is resolved through the
    metadata `fetch_weights` stored beside the weights, so the job needs no hub access for the config either."""
    name = str(model_cfg["backbone"])
    path = cached_weights(model_cfg)
    if name.startswith("hf-hub:") and path is not None and path.with_suffix(".json").is_file():
        meta = json.loads(path.with_suffix(".json").read_text())
        args = {k: v for k, v in (meta.get("model_args") or {}).items() if k not in {"num_classes", "global_pool"}}
        return meta["architecture"], args
    return name, {}


def fetch_weights(model_cfg: Mapping[str, Any], out_path: str | Path | None = None) -> Path:
    """Download the backbone's pretrained weights with timm (network: the submitting machine only) and store the
    state_dict, plus the architecture of an `hf-hub:` model, under the cache; returns the file."""
    import timm

    from msamil.util.atomic import atomic_path, write_text

    out = Path(out_path) if out_path else cached_weights({**model_cfg, "pretrained": True, "pretrained_path": None})
    assert out is not None
    name = str(model_cfg["backbone"])
    model = timm.create_model(name, pretrained=True, num_classes=0, global_pool="", **backbone_kwargs(model_cfg))
    meta: dict[str, Any] = {"backbone": name, "backbone_kwargs": model_cfg.get("backbone_kwargs") or {}}
    if name.startswith("hf-hub:"):
        from timm.models._hub import load_model_config_from_hf

        parsed = load_model_config_from_hf(name.removeprefix("hf-hub:"))
        meta.update(architecture=parsed[1], model_args={k: v for k, v in (parsed[2] or {}).items()
                                                        if isinstance(v, int | float | str | bool | list)})
    # the metadata first: the .pt is the rule's output, so once it exists everything a job needs does too
    write_text(out.with_suffix(".json"), json.dumps(meta, indent=1, sort_keys=True, default=str))
    with atomic_path(out) as tmp:
        torch.save({"state_dict": model.state_dict(), **meta}, tmp)
    return out
