"""Any timm backbone, ViTs included: a tiny timm ViT (`test_vit`) with weights from a local file, configured the
way a pathology foundation model is (img_size, init_values, dynamic_img_size through model.backbone_kwargs), works
as MsaMIL-Net's backbone (trained end to end and frozen) and as the baselines' feature extractor."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import timm
import torch

from msamil.baselines.features import PooledBackbone, extract_slide
from msamil.cache.writer import build_cache
from msamil.models import MsaMILNet
from msamil.models.backbone import create_backbone

VIT_KWARGS = {"img_size": 32, "patch_size": 8, "init_values": 1e-5, "dynamic_img_size": True}


@pytest.fixture(scope="module")
def vit_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, torch.Tensor]]:
    """'Foundation model' weights in a local file, as UNI or Virchow ship them (a plain state_dict)."""
    path = tmp_path_factory.mktemp("vit") / "pytorch_model.bin"
    torch.manual_seed(123)
    state = timm.create_model("test_vit", num_classes=0, **VIT_KWARGS).state_dict()
    torch.save(state, path)
    return path, state


def _cfg(path: Path, **extra: object) -> dict:
    return {"backbone": "test_vit", "backbone_kwargs": dict(VIT_KWARGS), "pretrained": True,
            "pretrained_path": str(path), "input_px": 32, "dim": 16, "token_layers": 1, "token_heads": 2,
            "mhe_layers": 1, "mhe_heads": 2, "mhe_rank": 4, "n_queries": 3, "dropout": 0.0, **extra}


def _bag(n: int = 6, px: int = 32) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return (torch.randn(n, 3, px, px, generator=g), torch.randint(0, 4000, (n, 2), generator=g),
            torch.arange(n) % 3)


def test_vit_backbone_loads_the_local_weights(vit_file: tuple) -> None:
    path, state = vit_file
    backbone = create_backbone(_cfg(path), seed=0)
    assert backbone.num_prefix_tokens == 1
    assert all(torch.equal(backbone.state_dict()[k], v) for k, v in state.items())


def test_vit_as_msamil_backbone_end_to_end(vit_file: tuple) -> None:
    path, _ = vit_file
    model = MsaMILNet(_cfg(path), n_classes=2, seed=0)
    assert model.msfem.n_prefix == 1 and model.msfem.grid == 4  # 32 px / patch 8: a 4x4 token grid
    x, coords, scale = _bag()
    logits, attn = model(x, coords, scale, micro_batch=4, checkpointing=True)
    assert logits.shape == (2,) and attn.shape == (6,)
    logits.sum().backward()
    grads = [p.grad for n, p in model.msfem.backbone.named_parameters() if n.startswith("blocks.0.")]
    assert grads and all(g is not None and g.abs().sum() > 0 for g in grads)
    # the embedding reads the patch tokens, not only the CLS: another image, another embedding
    model.eval()
    with torch.no_grad():
        emb = model.embed(x)
        assert emb.shape == (6, 16) and not torch.allclose(emb[0], emb[1])
        # dynamic_img_size: another input size still runs (MSFEM resizes its position embedding too)
        assert model.embed(torch.randn(2, 3, 48, 48)).shape == (2, 16)


def test_vit_frozen_two_stage_and_no_token_layers(vit_file: tuple) -> None:
    path, _ = vit_file
    x, coords, scale = _bag()
    frozen = MsaMILNet(_cfg(path), n_classes=2, freeze_backbone=True, seed=0)
    logits, _ = frozen(x, coords, scale, micro_batch=3, checkpointing=True)
    logits.sum().backward()
    assert all(p.grad is None for p in frozen.msfem.backbone.parameters())
    assert frozen.msfem.proj.weight.grad is not None
    mean_pool = MsaMILNet(_cfg(path, token_layers=0), n_classes=2, seed=0)
    assert mean_pool(x, coords, scale)[0].shape == (2,)


def test_vit_as_the_baselines_feature_extractor(vit_file: tuple, tmp_path: Path) -> None:
    from cache_fixtures import make_pair

    path, _ = vit_file
    src = make_pair(tmp_path / "src", width_um=700.0, height_um=600.0)["s20"]
    cache = tmp_path / "s.h5"
    build_cache(src["path"], "s", src["mask"], cache, mpp=0.5, mpp_20x=0.5, patch_px=64,
                tissue_min={"20x": 0.5, "10x": 0.25, "5x": 0.1}, encoding="jpeg", jpeg_quality=90)
    embedder = PooledBackbone(create_backbone(_cfg(path), seed=0)).eval()
    feats = extract_slide(embedder, cache, input_px=32, chunk=8)
    assert feats.features.shape[1] == 64 and len(feats.features) == len(feats.coords) > 1
    assert np.isfinite(feats.features).all()
    # CLS readout: the pooled vector is the backbone's first token
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(embedder(x), embedder.backbone(x)[:, 0])
