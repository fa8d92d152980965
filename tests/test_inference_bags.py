"""Inference sees what training saw (DESIGN.md section 6): training-sized, scale-balanced bags, averaged; a slide's
prediction depends neither on the order the patches arrive in nor, beyond a stated tolerance, on the draw seed."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from msamil.cache.bags import balanced_shares
from msamil.models import MsaMILNet
from msamil.training.inference import inference_bags, policy, predict_slide
from tests.test_train import Bag

torch.set_num_threads(1)

TINY = {"backbone": "test_efficientnet", "pretrained": False, "pretrained_path": None,
        "backbone_kwargs": {"output_stride": 16}, "input_px": 32, "dim": 16, "token_layers": 1, "token_heads": 2,
        "mhe_layers": 1, "mhe_heads": 2, "mhe_rank": 4, "n_queries": 3, "dropout": 0.0}
COUNTS = (60, 15, 4)  # 20x, 10x, 5x: the ~16:4:1 mix of a whole slide
BAG = 24
# The stated tolerance (docs/CONTRACT.md): between draw seeds a slide's averaged probability moves by less than this.
SEED_TOLERANCE = 0.05




class Reader:
    """A slide's patches, returned in chunks in the order `order` (a permutation) gives."""

    def __init__(self, order: np.ndarray | None = None, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        n = sum(COUNTS)
        self.scale = np.repeat(np.arange(3), COUNTS)
        self.index = np.concatenate([np.arange(c) for c in COUNTS])
        self.coords = rng.integers(0, 40, (n, 2)) * 64
        # a bright blob in a few 20x patches: a cue a random model still reacts to, so bags differ
        self.imgs = rng.integers(0, 200, (n, 16, 16, 3)).astype(np.uint8)
        self.imgs[:6] = 255
        self.order = np.arange(n) if order is None else np.asarray(order)

    def __len__(self) -> int:
        return len(self.order)

    def chunks(self, size: int):
        for a in range(0, len(self.order), size):
            yield self.bag(np.arange(a, min(a + size, len(self.order))))

    def bag(self, flat: np.ndarray):
        sel = self.order[flat]
        return Bag(self.imgs[sel], self.coords[sel], self.scale[sel], self.index[sel], 2560, 2560)

    def sample_positions(self, n: int, rng: np.random.Generator, balanced: bool = False) -> np.ndarray:
        """BagReader's balanced draw (this reader's positions are scale-grouped when `order` is the identity)."""
        starts = np.concatenate([[0], np.cumsum(COUNTS)])
        take = balanced_shares(np.array(COUNTS), n)
        return np.concatenate([starts[k] + np.sort(rng.choice(c, int(t), replace=False))
                               for k, (c, t) in enumerate(zip(COUNTS, take, strict=True)) if t])


@pytest.fixture(scope="module")
def model():
    """A random model whose head is sharpened (x50) and centred, so single bags disagree noticeably around 0.5:
    a harder case than a random model, whose bag outputs barely differ."""
    torch.manual_seed(0)
    net = MsaMILNet(TINY, 2, seed=0).eval()
    with torch.no_grad():
        net.head[1].weight.mul_(50)
        net.head[1].bias.zero_()
        diff = np.mean([np.diff(_one_bag(net, s)[1]["logits"]) for s in range(4)])
        net.head[1].bias[1] -= float(diff)
    return net


def _one_bag(model, seed):
    """The prediction of one training-sized bag drawn with `seed`: what a single draw would say."""
    pos = inference_bags(np.repeat(np.arange(3), COUNTS), BAG, np.random.default_rng(seed))[0]
    return _predict(model, Reader(order=pos), seed=seed, min_bags=1)


def _predict(model, reader, seed=0, min_bags=8, chunk=16):
    out = predict_slide(model, reader, torch.device("cpu"), 32, chunk, "s", bag_size=BAG, min_bags=min_bags,
                        seed=seed)
    return torch.softmax(torch.as_tensor(out["logits"]), 0).numpy(), out


def test_inference_bags_are_training_bags_that_cover_every_patch():
    scale = np.repeat(np.arange(3), COUNTS)
    bags = inference_bags(scale, BAG, np.random.default_rng(0), min_bags=3)
    shares = balanced_shares(np.array(COUNTS), BAG)  # what BagReader.sample(balanced=True) takes per scale
    assert shares.tolist() == [10, 10, 4]
    assert len(bags) == max(3, -(-60 // 10), -(-15 // 10))
    for bag in bags:
        assert len(np.unique(bag)) == len(bag) == BAG  # distinct patches, the training bag size
        assert np.bincount(scale[bag], minlength=3).tolist() == shares.tolist()
    assert set(np.concatenate(bags)) == set(range(sum(COUNTS)))  # every patch is seen at least once
    small = inference_bags(scale[:20], BAG, np.random.default_rng(0), min_bags=8)
    assert len(small) == 1 and small[0].tolist() == list(range(20))  # a slide smaller than a bag: one bag of all


def test_prediction_does_not_depend_on_patch_order(model):
    probs, out = _predict(model, Reader())
    perm = np.random.default_rng(1).permutation(sum(COUNTS))
    probs_p, out_p = _predict(model, Reader(order=perm), chunk=7)
    np.testing.assert_allclose(probs_p, probs, rtol=0, atol=1e-6)
    for key in ("coords", "scale_idx", "index"):
        np.testing.assert_array_equal(out_p[key], out[key])
    np.testing.assert_allclose(out_p["attention"], out["attention"], rtol=0, atol=1e-6)
    assert (out["attention"] > 0).all()  # every patch was in some bag


def test_prediction_depends_on_the_draw_seed_less_than_the_stated_tolerance(model):
    one_bag = np.array([_one_bag(model, s)[0][1] for s in range(8)])
    averaged = np.array([_predict(model, Reader(), seed=s)[0][1] for s in range(8)])
    print(f"P(class 1) over 8 draw seeds: one bag {one_bag.min():.3f}..{one_bag.max():.3f}, "
          f"inference (>= 8 covering bags) {averaged.min():.3f}..{averaged.max():.3f}")
    assert np.ptp(one_bag) > 2 * SEED_TOLERANCE  # single draws do disagree: the averaging is what bounds it
    assert np.ptp(averaged) < SEED_TOLERANCE


def test_validation_embeds_a_seeded_balanced_draw_of_val_bags_bags(model):
    """val_bags: validation reads val_bags * bag_size patches (scale-balanced, same draw every epoch) and averages
    val_bags bags over them, instead of embedding every patch of the slide each epoch."""
    cfg = {"bag_size": BAG, "infer_bags": 8, "scale_balanced": True, "val_bags": 2}
    val = policy(cfg, 0, 0, "s", validation=True)
    assert (val["min_bags"], val["max_patches"]) == (2, 2 * BAG)
    assert "max_patches" not in policy(cfg, 0, 0, "s")  # test inference still covers every patch
    assert "max_patches" not in policy({**cfg, "val_bags": None}, 0, 0, "s", validation=True)
    out = predict_slide(model, Reader(), torch.device("cpu"), 32, 16, "s", **val)
    assert len(out["attention"]) == 2 * BAG < sum(COUNTS)
    assert np.bincount(out["scale_idx"], minlength=3).tolist() == balanced_shares(np.array(COUNTS), 2 * BAG).tolist()
    # bags of [10, 10, 4] over the [22, 22, 4] drawn: 3 bags cover them (at least val_bags)
    assert int(out["n_bags"]) == 3 and (out["attention"] > 0).all()
    again = predict_slide(model, Reader(), torch.device("cpu"), 32, 7, "s", **val)
    np.testing.assert_allclose(again["logits"], out["logits"], rtol=0, atol=1e-6)  # the same draw every epoch
    full = predict_slide(model, Reader(), torch.device("cpu"), 32, 16, "s", **{**val, "max_patches": 10_000})
    np.testing.assert_array_equal(full["logits"], _predict(model, Reader(), seed=val["seed"], min_bags=2)[1]["logits"])
