"""Baselines: ABMIL learns, DINO does not collapse and its teacher is the student's EMA, ICMIL's instance teacher is
the bag head, and no test-fold slide ever reaches training or model selection."""

from __future__ import annotations

import copy
import json
import math

import h5py
import numpy as np
import pandas as pd
import pytest
import torch

from msamil.baselines import run as run_mod
from msamil.baselines.abmil import GatedABMIL, predict_abmil, train_abmil
from msamil.baselines.augment import random_geometry
from msamil.baselines.dino import DINOLoss, DINONet, dino_pretrain, ema_update
from msamil.baselines.icmil import confidence_weights, icmil_losses, instance_teacher, mean_kl
from msamil.baselines.run import Audit, run_baseline
from msamil.baselines.sampling import PatchSampler
from msamil.models.backbone import create_backbone
from msamil.training.metrics import classification_metrics
from tests.baseline_fixtures import fake_dataset, tiny_config

TINY = {"backbone": "test_efficientnet", "pretrained": False, "pretrained_path": None, "input_px": 32}


@pytest.fixture(autouse=True)
def _one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return fake_dataset(tmp_path_factory.mktemp("fake"))


def _caches(ds, slides=None):
    return {p.stem: p for p in ds["caches"] if slides is None or p.stem in slides}


def _split(ds, fold, split):
    folds = pd.read_csv(ds["folds_tsv"], sep="\t")
    return set(folds.loc[(folds["fold"] == fold) & (folds["split"] == split), "slide"])


# ------------------------------------------------------------------------------------------------------- ABMIL
def _bags(rng, n, dim=16, pos_frac=0.5):
    """Bags of 20-60 Gaussian instances; a positive bag hides a few instances shifted along one direction."""
    bags, labels = [], []
    for i in range(n):
        x = rng.normal(size=(rng.integers(20, 60), dim)).astype(np.float32)
        y = int(i < n * pos_frac)
        if y:
            k = max(2, len(x) // 8)
            x[:k, 0] += 3.0
        bags.append(x)
        labels.append(y)
    return bags, labels


def test_abmil_learns_separable_bags():
    rng = np.random.default_rng(0)
    train, y_train = _bags(rng, 40)
    val, y_val = _bags(rng, 10)
    test, y_test = _bags(rng, 20)
    res = train_abmil(train, y_train, val, y_val, n_classes=2, seed=0,
                      cfg={"epochs": 15, "lr": 1e-3, "hidden": 32, "attn_dim": 16, "dropout": 0.0})
    probs, atts = predict_abmil(res.model, test)
    assert classification_metrics(np.array(y_test), probs)["auc"] >= 0.95
    assert 0 <= res.best_epoch < 15 and len(res.history) == 15
    # attention sums to one and prefers the shifted (key) instances in positive bags
    pos = [a for a, y in zip(atts, y_test, strict=True) if y == 1]
    assert all(abs(a.sum() - 1) < 1e-5 for a in atts)
    assert np.mean([a[: max(2, len(a) // 8)].mean() > a.mean() for a in pos]) >= 0.8


# -------------------------------------------------------------------------------------------------------- DINO
def test_dino_tiny_run_loss_falls_and_teacher_does_not_collapse(dataset):
    cfg = {"epochs": 3, "batch_size": 16, "patches_per_epoch": 160, "out_dim": 64, "head_hidden": 64,
           "bottleneck": 32, "n_local_crops": 2, "lr": 0.005, "warmup_epochs": 0.3, "momentum": [0.99, 1.0],
           "teacher_temp": [0.04, 0.07], "warmup_teacher_temp_epochs": 1}
    sampler = PatchSampler(_caches(dataset), seed=0)
    res = dino_pretrain(create_backbone(TINY, seed=0), sampler, input_px=32, cfg=cfg, seed=0)
    loss = np.array([h["loss"] for h in res.history])
    ent = np.array([h["teacher_entropy"] for h in res.history])
    marg = np.array([h["teacher_marginal_entropy"] for h in res.history])
    log_k = math.log(64)
    print(f"DINO tiny run: loss {loss[:5].mean():.3f} -> {loss[-5:].mean():.3f}; teacher entropy "
          f"{ent[:5].mean():.3f} -> {ent[-5:].mean():.3f}; marginal entropy {marg[-5:].mean():.3f} "
          f"(log K = {log_k:.3f})")
    assert len(loss) == 30 and np.isfinite(loss).all()
    assert loss[-5:].mean() < loss[:5].mean() - 0.2
    # not collapsed to one dimension (marginal spread) and not collapsed to uniform (per-sample sharp)
    assert marg[-5:].mean() > 0.5 * log_k
    assert ent[-5:].mean() < 0.9 * log_k
    # schedules: momentum rises, teacher temperature warms up, last layer frozen in epoch 0 (never changed then)
    assert res.history[0]["momentum"] < res.history[-1]["momentum"] <= 1.0
    assert res.history[0]["teacher_temp"] == pytest.approx(0.04)
    assert res.history[-1]["teacher_temp"] == pytest.approx(0.07)


def test_dino_teacher_is_ema_of_student(dataset):
    """After one iteration: teacher = m * (initial student) + (1 - m) * (updated student), parameter by parameter."""
    cfg = {"epochs": 1, "batch_size": 8, "patches_per_epoch": 8, "out_dim": 32, "head_hidden": 32,
           "bottleneck": 16, "n_local_crops": 1, "lr": 0.05, "warmup_epochs": 0, "momentum": [0.9, 1.0],
           "freeze_last_layer": 0}
    backbone = create_backbone(TINY, seed=0)
    torch.manual_seed(0)  # dino_pretrain seeds the same way before building the head
    initial = DINONet(copy.deepcopy(backbone), 32, 32, 16)
    res = dino_pretrain(backbone, PatchSampler(_caches(dataset), seed=0), input_px=32, cfg=cfg, seed=0)
    m = res.history[0]["momentum"]
    assert m == pytest.approx(0.9)
    moved = 0
    for p0, ps, pt in zip(initial.parameters(), res.student.parameters(), res.teacher.parameters(), strict=True):
        torch.testing.assert_close(pt, m * p0 + (1 - m) * ps, rtol=1e-5, atol=1e-6)
        moved += int(not torch.equal(p0, ps))
    assert moved > 0  # the student did take a step


def test_ema_update_and_centering_by_hand():
    teacher, student = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    t0 = [p.detach().clone() for p in teacher.parameters()]
    ema_update(teacher, student, 0.75)
    for a, p0, ps in zip(teacher.parameters(), t0, student.parameters(), strict=True):
        torch.testing.assert_close(a, 0.75 * p0 + 0.25 * ps)
    loss = DINOLoss(4, center_momentum=0.9)
    t_out = [torch.ones(2, 4), 3 * torch.ones(2, 4)]
    loss([torch.zeros(2, 4)] * 3, t_out, 0.04)
    torch.testing.assert_close(loss.center, torch.full((1, 4), 0.2))  # 0.9 * 0 + 0.1 * mean(1, 3)


def test_augmentation_is_exact_rotation_flip_at_full_scale():
    x = torch.rand(64, 3, 8, 8)
    out = random_geometry(x, 8, (1.0, 1.0), torch.Generator().manual_seed(0), ratio=(1.0, 1.0))
    views = [torch.rot90(v, k, dims=(-2, -1)) for k in range(4) for v in (x, x.flip(-1))]
    for i in range(len(x)):
        assert any(torch.allclose(out[i], v[i], atol=1e-5) for v in views)


# ------------------------------------------------------------------------------------------------------- ICMIL
def test_instance_teacher_equals_bag_head_on_single_instances():
    torch.manual_seed(0)
    head = GatedABMIL(12, 3, hidden=16, attn_dim=8, dropout=0.25).eval()
    z = torch.randn(7, 12)
    inst = instance_teacher(head, z)
    for i in range(len(z)):
        bag_logits, att = head(z[i:i + 1])
        assert att.item() == pytest.approx(1.0)
        torch.testing.assert_close(inst[i], bag_logits)


def test_icmil_losses_match_the_formula():
    torch.manual_seed(0)
    head = GatedABMIL(6, 2, hidden=5, attn_dim=4, dropout=0.0).eval()
    g = torch.nn.Linear(10, 6)
    x = torch.randn(9, 10)
    out = icmil_losses(g, head, g, head, x, x)
    # identical teacher and student on identical inputs: every KL term vanishes
    assert out["loss"].item() == pytest.approx(0.0, abs=1e-6)
    p, q = torch.tensor([[0.5, 0.5]]), torch.tensor([[0.25, 0.75]])
    expected = (0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75)) / 2  # mean over both elements
    assert mean_kl(p, q).item() == pytest.approx(expected)
    w = confidence_weights(head, head.fc(g(x)), beta=6.0)
    assert w.max().item() == pytest.approx(1.0) and (w >= 0).all()


# ------------------------------------------------------------------------------------------- runs and leakage
@pytest.mark.parametrize("method", ["abmil", "dino_abmil", "icmil_abmil"])
def test_run_writes_outputs_and_never_trains_on_test_slides(dataset, tmp_path, monkeypatch, method):
    fold = 1
    train, val, test = (_split(dataset, fold, s) for s in ("train", "val", "test"))
    drawn: list[str] = []
    original = PatchSampler.batch

    def spy(self, n):
        imgs, owners = original(self, n)
        drawn.extend(owners)
        return imgs, owners

    monkeypatch.setattr(PatchSampler, "batch", spy)
    trained_on: list[tuple[int, int]] = []
    original_train = run_mod.train_abmil

    def spy_train(train_bags, train_labels, val_bags, val_labels, **kw):
        trained_on.append((len(train_bags), len(val_bags)))
        return original_train(train_bags, train_labels, val_bags, val_labels, **kw)

    monkeypatch.setattr(run_mod, "train_abmil", spy_train)
    cfg = tiny_config(dataset["classes"])
    run_dir = tmp_path / method / f"fold{fold}"
    run_baseline(config=cfg, dataset="fake", method=method, fold=fold, slides_tsv=dataset["slides_tsv"],
                 folds_tsv=dataset["folds_tsv"], cache_paths=dataset["caches"], run_dir=run_dir, device="cpu")

    # only training-fold slides feed DINO and ICMIL fine-tuning
    if method == "abmil":
        assert drawn == []
    else:
        assert drawn and set(drawn) <= train
    seen = pd.read_csv(run_dir / "seen_slides.tsv", sep="\t")
    assert not set(seen["slide"]) & test
    for phase, group in seen.groupby("phase"):
        assert set(group["slide"]) <= (val if phase.endswith("_val") else train), phase
    assert all(n == (len(train), len(val)) for n in trained_on)

    preds = pd.read_csv(run_dir / "predictions.tsv", sep="\t")
    assert set(preds["slide"]) == test and preds["fold"].eq(fold).all()
    np.testing.assert_allclose(preds[["prob_0", "prob_1"]].sum(axis=1), 1.0, atol=1e-5)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    eff = json.loads((run_dir / "efficiency.json").read_text())
    assert {"auc", "acc", "balanced_acc", "macro_f1"} <= set(metrics)
    assert {"patches_per_slide", "seconds_per_epoch", "train_patches_per_s", "infer_patches_per_s",
            "peak_mem_mb", "device", "phases", "backbone_steps", "backbone_patch_views", "wall_s",
            "backbone_init_sha256", "features"} <= set(eff)
    with h5py.File(run_dir / "attention.h5", "r") as f:
        assert set(f) == test
        for slide in test:
            att = f[slide]["attention"][:]
            assert att.sum() == pytest.approx(1.0, abs=1e-4)
            assert f[slide]["coords"].shape == (len(att), 2) and not f[slide]["scale_idx"][:].any()
    if method == "dino_abmil":
        curve = pd.read_csv(run_dir / "dino_loss.tsv", sep="\t")
        assert {"loss", "teacher_entropy", "momentum", "teacher_temp"} <= set(curve.columns)
        assert eff["phases"]["dino_epochs"][0]["patches_per_s"] > 0


def test_audit_refuses_a_leaked_test_slide():
    audit = Audit()
    audit.add("dino", ["a", "b"])
    audit.check(["c"])
    with pytest.raises(RuntimeError, match="test-fold slides"):
        audit.check(["b"])
