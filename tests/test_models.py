"""MsaMIL-Net model: order invariance, gradient flow, micro-batching/checkpointing equivalence, ablations."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from msamil.models import IAAM, MsaMILNet
from msamil.models.iaam import instance_order

torch.set_num_threads(1)

TINY = {"backbone": "test_efficientnet", "pretrained": False, "pretrained_path": None, "input_px": 32, "dim": 16,
        "token_layers": 1, "token_heads": 2, "mhe_layers": 2, "mhe_heads": 2, "mhe_rank": 4, "n_queries": 3,
        "dropout": 0.0}


def _bag(n: int = 9, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, 64, 64, generator=g)  # 2x2 feature maps: BatchNorm accepts micro-batches of one
    coords = torch.randint(0, 1000, (n, 2), generator=g)
    coords[1] = coords[0]  # same place, other scale: the scale key breaks the tie
    scale = torch.randint(0, 3, (n,), generator=g)
    scale[1] = (scale[0] + 1) % 3
    return x, coords, scale


def _first_conv(model: MsaMILNet) -> nn.Conv2d:
    return next(m for m in model.msfem.backbone.modules() if isinstance(m, nn.Conv2d))


def test_instance_order_is_lexicographic_x_y_scale():
    coords = torch.tensor([[5, 1], [1, 9], [1, 2], [1, 2]])
    scale = torch.tensor([0, 0, 2, 1])
    assert instance_order(coords, scale).tolist() == [3, 2, 1, 0]


@pytest.mark.parametrize("pooling", ["dmq", "gated"])
def test_iaam_output_does_not_depend_on_instance_order(pooling):
    torch.manual_seed(0)
    iaam = IAAM(16, mhe_layers=2, mhe_heads=2, mhe_rank=4, n_queries=3, pooling=pooling).eval()
    _, coords, scale = _bag(12)
    emb = torch.randn(12, 16)
    perm = torch.randperm(12)
    with torch.no_grad():
        bag, attn = iaam(emb, coords, scale, (1000.0, 1000.0))
        bag_p, attn_p = iaam(emb[perm], coords[perm], scale[perm], (1000.0, 1000.0))
    torch.testing.assert_close(bag_p, bag, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(attn_p, attn[perm], rtol=1e-5, atol=1e-7)  # attention follows its instance
    assert attn.shape == (12,) and torch.isclose(attn.sum(), torch.tensor(1.0), atol=1e-5)


def test_gradients_reach_the_backbone_first_layer_end_to_end():
    model = MsaMILNet(TINY, 2, seed=0).train()
    x, coords, scale = _bag()
    logits, _ = model(x, coords, scale, (1000.0, 1000.0), micro_batch=4, checkpointing=True)
    nn.functional.cross_entropy(logits[None], torch.tensor([1])).backward()
    grad = _first_conv(model).weight.grad
    assert grad is not None and grad.abs().sum() > 0


def test_frozen_backbone_gets_no_gradient_and_stays_in_eval_mode():
    model = MsaMILNet(TINY, 2, freeze_backbone=True, seed=0).train()
    assert not model.msfem.backbone.training and model.iaam.training
    x, coords, scale = _bag()
    logits, _ = model(x, coords, scale, (1000.0, 1000.0), micro_batch=4, checkpointing=True)
    nn.functional.cross_entropy(logits[None], torch.tensor([0])).backward()
    assert all(p.grad is None for p in model.msfem.backbone.parameters())
    assert model.msfem.proj.weight.grad is not None  # the token transformer still trains


def test_micro_batching_with_checkpointing_matches_one_full_pass():
    """Same loss and gradients (1e-5 relative, fp32 CPU). BatchNorm uses fixed statistics (as in training with
    bn_calib_patches > 0); with batch statistics micro-batches would see other statistics by design."""
    x, coords, scale = _bag(10)
    results = []
    for micro, ckpt in ((None, False), (3, True)):
        torch.manual_seed(0)  # the backbone follows `seed`; the other modules draw from the global generator
        model = MsaMILNet(TINY, 3, seed=0)
        model.frozen_bn = True
        model.train()
        logits, _ = model(x, coords, scale, (1000.0, 1000.0), micro_batch=micro, checkpointing=ckpt)
        loss = nn.functional.cross_entropy(logits[None], torch.tensor([2]))
        loss.backward()
        results.append((loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}))
    (loss_a, grads_a), (loss_b, grads_b) = results
    assert torch.allclose(loss_a, loss_b, rtol=1e-5, atol=0)
    assert grads_a.keys() == grads_b.keys()
    # parameters whose true gradient is 0 (key biases under softmax) hold rounding noise: floor at 1e-8 x total
    floor = 1e-8 * torch.sqrt(sum(g.norm() ** 2 for g in grads_a.values()))
    for name, ga in grads_a.items():
        diff = (grads_b[name] - ga).norm()
        assert diff <= 1e-5 * ga.norm() + floor, f"{name}: {diff} vs {ga.norm()}"


@pytest.mark.parametrize(
    ("switches", "model_over"),
    [({}, {}), ({"mhe": False}, {}), ({"pooling": "gated"}, {}), ({"scales": ["20x"]}, {}),
     ({"freeze_backbone": True}, {}), ({}, {"token_layers": 0}), ({}, {"backbone": "test_resnet"})],
    ids=["full", "no-mhe", "gated", "20x-only", "frozen", "no-token-transformer", "resnet"],
)
def test_ablation_switches_build_and_run(switches, model_over):
    model = MsaMILNet({**TINY, **model_over}, 3, seed=0, **switches).train()
    x, coords, scale = _bag(7)
    logits, attn = model(x, coords, scale, (1000.0, 1000.0), micro_batch=3, checkpointing=True)
    assert logits.shape == (3,) and attn.shape == (7,) and torch.isfinite(attn).all()
    nn.functional.cross_entropy(logits[None], torch.tensor([1])).backward()
    if switches.get("mhe") is False:
        assert len(model.iaam.blocks) == 0


def test_patch_encoder_accepts_other_feature_map_sizes():
    model = MsaMILNet(TINY, 2, seed=0).eval()
    with torch.no_grad():
        emb = model.msfem(torch.randn(2, 3, 96, 96))  # 3x3 map vs the 1x1 grid learned at 32 px (input_px)
    assert emb.shape == (2, 16)
