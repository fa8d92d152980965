"""Pretrained weights for offline compute nodes: a local rule fetches them once, jobs load a file, no network."""

from __future__ import annotations

import shutil
import socket
import subprocess
from pathlib import Path

import pytest
import timm
import torch
import yaml
from test_lint import workflow_rules

from msamil.config import cached_weights, weights_key
from msamil.errors import ConfigError
from msamil.models.backbone import create_backbone
from msamil.models.weights import fetch_weights

REPO = Path(__file__).resolve().parents[1]
TINY = {"backbone": "test_efficientnet", "pretrained": True, "pretrained_path": None, "input_px": 32}


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any attempt to open a network connection fails the test."""
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"network access attempted: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def _reference_state(path: Path, seed: int = 7) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    state = timm.create_model("test_efficientnet", num_classes=0, global_pool="").state_dict()
    torch.save(state, path)
    return state


def _same(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> bool:
    return all(torch.equal(model.state_dict()[k], v) for k, v in state.items())


def test_job_loads_the_cache_without_network(tmp_path: Path, offline: None) -> None:
    cfg = {**TINY, "weights_cache": str(tmp_path / "cache")}
    path = cached_weights(cfg)
    assert path == tmp_path / "cache" / "test_efficientnet.pt"
    path.parent.mkdir()
    state = _reference_state(path)
    assert _same(create_backbone(cfg, seed=0), state)
    assert not _same(create_backbone({**cfg, "pretrained": False}, seed=0), state)  # random init otherwise


def test_missing_cache_names_the_local_rule(tmp_path: Path, offline: None) -> None:
    with pytest.raises(ConfigError, match="fetch_weights"):
        create_backbone({**TINY, "weights_cache": str(tmp_path)})


def test_pretrained_path_wins_and_needs_no_cache(tmp_path: Path, offline: None) -> None:
    state = _reference_state(tmp_path / "mine.pt", seed=3)
    cfg = {**TINY, "pretrained_path": str(tmp_path / "mine.pt"), "weights_cache": str(tmp_path / "none")}
    assert cached_weights(cfg) is None
    assert _same(create_backbone(cfg), state)
    with pytest.raises(ConfigError, match="does not exist"):
        create_backbone({**cfg, "pretrained_path": str(tmp_path / "absent.pt")})


def test_fetch_then_load_offline(tmp_path: Path, offline: None) -> None:
    """The fetch path itself, with timm's pretrained loading pointed at a local file (pretrained_cfg_overlay),
    so it runs here without network; the key changes with backbone_kwargs."""
    state = _reference_state(tmp_path / "hub.pth", seed=11)
    cfg = {**TINY, "weights_cache": str(tmp_path / "cache"),
           "backbone_kwargs": {"pretrained_cfg_overlay": {"file": str(tmp_path / "hub.pth")}}}
    out = fetch_weights(cfg)
    assert out == cached_weights(cfg) and out.name.startswith("test_efficientnet-")
    assert weights_key(cfg) != weights_key(TINY)
    assert _same(create_backbone(cfg, seed=0), state)


def _snakemake() -> str:
    found = shutil.which("snakemake", path=str(REPO / ".venv" / "bin")) or shutil.which("snakemake")
    if found is None:
        pytest.skip("snakemake is not installed")
    return found


def test_dry_run_plans_a_local_fetch(tmp_path: Path) -> None:
    """One fetch per distinct pretrained backbone, by a localrule (it runs where snakemake runs, never on a
    compute node)."""
    cfg = yaml.safe_load((REPO / "config.yaml").read_text())
    cfg["model"].update(pretrained=True, weights_cache="weights")
    # a ViT does not take the demo CNN's output_stride: the method's model override replaces backbone_kwargs
    cfg["methods"]["msamil_vit"] = {"kind": "msamil", "model": {"backbone": "test_vit", "backbone_kwargs": {}}}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    cnn = cached_weights(cfg["model"])
    assert cnn is not None and cnn.name.startswith("test_efficientnet-")  # named by its kwargs' hash
    done = subprocess.run([_snakemake(), str(cnn), "weights/test_vit.pt", "-n",
                           "-s", str(REPO / "Snakefile"), "-d", str(tmp_path / "w"),
                           "--configfile", str(tmp_path / "c.yaml")], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout + done.stderr
    assert out.count("rule fetch_weights:") == 2, out[-3000:]
    assert "wildcards: weights=weights/test_vit.pt" in out
    rules = {r["name"]: r for r in workflow_rules(str(tmp_path / "c.yaml"))}
    assert rules["fetch_weights"]["local"] and not rules["train"]["local"]


def test_hub_model_rebuilt_offline_from_the_fetched_metadata(tmp_path: Path, offline: None) -> None:
    """What fetch_weights stores for an `hf-hub:` name (architecture + model args beside the weights) is enough
    to rebuild the model in a job without the hub."""
    import json

    cfg = {"backbone": "hf-hub:someone/tiny-vit", "pretrained": True, "weights_cache": str(tmp_path)}
    path = cached_weights(cfg)
    torch.manual_seed(5)
    state = timm.create_model("test_vit", num_classes=0, global_pool="", img_size=32, patch_size=8).state_dict()
    torch.save({"state_dict": state}, path)
    path.with_suffix(".json").write_text(json.dumps({"architecture": "test_vit", "model_args": {
        "img_size": 32, "patch_size": 8, "num_classes": 1000, "global_pool": "token"}}))
    model = create_backbone(cfg)
    assert model.patch_embed.patch_size == (8, 8) and _same(model, state)
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 17, 64)  # tokens: num_classes/global_pool kept ours
