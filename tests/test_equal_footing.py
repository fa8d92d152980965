"""Every method on equal footing (DESIGN.md section 7): one seeding function (the same initial backbone in a fold
for every method kind), one BatchNorm policy (statistics from the fold's training slides, wherever a backbone
embeds in eval mode), and budgets stated alike in every efficiency.json."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from torch import nn

from msamil.baselines import run as baseline_run
from msamil.baselines.run import matched_budgets, msamil_views, run_baseline
from msamil.models.backbone import state_fingerprint
from msamil.models.batchnorm import batchnorm_layers, estimate_batchnorm
from msamil.training import trainer as trainer_mod
from msamil.training.trainer import run_training
from msamil.util.seeding import STREAMS, stream_seed
from tests.baseline_fixtures import fake_dataset

pytestmark = pytest.mark.xdist_group("footing")
REPO = Path(__file__).resolve().parents[1]
KINDS = {"msamil": {"kind": "msamil", "sffm": False},
         "msamil_frozen": {"kind": "msamil", "sffm": False, "freeze_backbone": True},
         "abmil": {"kind": "abmil"}, "dino_abmil": {"kind": "dino_abmil"}, "icmil_abmil": {"kind": "icmil_abmil"}}
BN_CALIB = 16


@pytest.fixture(autouse=True)
def _one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def tiny_config(classes: list[str], seed: int = 0) -> dict[str, Any]:
    """The default config at toy size: every method kind runs a fold in seconds on the baseline fixtures."""
    cfg = yaml.safe_load((REPO / "config.yaml").read_text())
    cfg["seed"] = seed
    cfg["device"] = "cpu"
    cfg["dataset_config"] = {"fake": {"source": "synthetic", "classes": classes}}
    cfg["model"].update(dim=16, token_heads=2, mhe_heads=2, mhe_rank=4, n_queries=3, dropout=0.0)
    cfg["train"].update(epochs=2, bag_size=8, micro_batch=4, accum_slides=2, bn_calib_patches=BN_CALIB,
                        infer_chunk=16, infer_bags=2, augment=False)
    b = cfg["baselines"]
    b["feature_chunk"] = 16
    b["abmil"].update(epochs=2, hidden=16, attn_dim=8)
    b["dino"].update(epochs=1, batch_size=8, out_dim=32, head_hidden=32, bottleneck=16, n_local_crops=2)
    b["icmil"].update(batch_size=8)
    cfg["methods"] = copy.deepcopy(KINDS)
    return cfg


def run_method(ds: dict[str, Any], cfg: dict[str, Any], method: str, fold: int, out: Path) -> Path:
    kind = cfg["methods"][method]["kind"]
    common = {"slides_tsv": ds["slides_tsv"], "folds_tsv": ds["folds_tsv"]}
    if kind == "msamil":
        run_training(cfg, "fake", method, fold, caches=ds["caches"], selection=None, out_dir=out, device="cpu",
                     progress=False, **common)
    else:
        run_baseline(config=cfg, dataset="fake", method=method, fold=fold, cache_paths=ds["caches"], run_dir=out,
                     device="cpu", **common)
    return out


class Spy:
    """Records the initial backbone state of every run and every BatchNorm calibration, through the real code."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.backbones: list[dict[str, torch.Tensor]] = []
        self.calibrations: list[dict[str, Any]] = []
        for module in (trainer_mod, baseline_run):
            real_fp, real_cal = module.state_fingerprint, module.calibrate_batchnorm
            monkeypatch.setattr(module, "state_fingerprint", self._fingerprint(real_fp))
            monkeypatch.setattr(module, "calibrate_batchnorm", self._calibrate(real_cal))

    def _fingerprint(self, real):
        def spy(module: nn.Module) -> str:
            self.backbones.append({k: v.detach().clone() for k, v in module.state_dict().items()})
            return real(module)
        return spy

    def _calibrate(self, real):
        def spy(backbone, slides, open_reader, n, rng, prepare, batch, device="cpu"):
            used = real(backbone, slides, open_reader, n, rng, prepare, batch, device)
            self.calibrations.append({"slides": sorted(slides), "n": n, "used": used,
                                      "stats": [m.running_mean.clone() for m in batchnorm_layers(backbone)]})
            return used
        return spy


@pytest.fixture(scope="module")
def ds(tmp_path_factory):
    return fake_dataset(tmp_path_factory.mktemp("footing"))


def _split(ds, fold: int, split: str) -> list[str]:
    folds = pd.read_csv(ds["folds_tsv"], sep="\t")
    return sorted(folds.loc[(folds["fold"] == fold) & (folds["split"] == split), "slide"])


@pytest.fixture(scope="module")
def runs(ds, tmp_path_factory):
    """Every method kind on fold 0, seed 0, with the spy recording backbones and calibrations per method."""
    out = tmp_path_factory.mktemp("runs")
    cfg = tiny_config(ds["classes"])
    record: dict[str, dict[str, Any]] = {}
    for method in KINDS:
        with pytest.MonkeyPatch.context() as mp:
            spy = Spy(mp)
            run_dir = run_method(ds, cfg, method, 0, out / method)
        record[method] = {"backbone": spy.backbones[0], "calibrations": spy.calibrations, "dir": run_dir,
                          "eff": json.loads((run_dir / "efficiency.json").read_text())}
    return cfg, record


# ---------------------------------------------------------------------------------------------------- seeding
def test_stream_seeds_are_distinct_per_seed_fold_and_stream_and_stable():
    seeds = {(s, f, n): stream_seed(s, f, n) for s in (0, 1) for f in (0, 1, 2) for n in STREAMS}
    assert len(set(seeds.values())) == len(seeds)
    assert all(0 <= v < 2**63 for v in seeds.values())
    assert stream_seed(0, 0, "backbone") == stream_seed(0, 0, "backbone")
    assert stream_seed(0, 0, "infer/a") != stream_seed(0, 0, "infer/b")
    with pytest.raises(ValueError, match="unknown random stream"):
        stream_seed(0, 0, "backbon")


def test_every_method_kind_starts_from_the_same_backbone_weights(runs):
    _, record = runs
    ref = record["msamil"]["backbone"]
    for method, rec in record.items():
        state = rec["backbone"]
        assert state.keys() == ref.keys(), method
        for key in ref:
            assert torch.equal(state[key], ref[key]), (method, key)
    # ... and every run says so in its efficiency.json, so results trees can be checked too
    assert len({rec["eff"]["backbone_init_sha256"] for rec in record.values()}) == 1


class _Stop(Exception):
    """Raised by the spy once the initial backbone is recorded: the rest of the run is not needed."""


def initial_backbone_hash(ds, cfg, method: str, fold: int, out: Path, monkeypatch) -> str:
    """The initial backbone hash of a method's run through its real code path, stopping the run right there."""
    seen: list[str] = []

    def stop(backbone):
        seen.append(state_fingerprint(backbone))
        raise _Stop

    for module in (trainer_mod, baseline_run):
        monkeypatch.setattr(module, "state_fingerprint", stop)
    with pytest.raises(_Stop):
        run_method(ds, cfg, method, fold, out)
    return seen[0]


def test_initial_backbone_differs_between_seeds_and_folds_alike_for_every_kind(ds, runs, tmp_path, monkeypatch):
    _, record = runs
    init0 = record["abmil"]["eff"]["backbone_init_sha256"]
    other = {}
    for seed, fold in ((0, 0), (1, 0), (0, 1)):
        cfg = tiny_config(ds["classes"], seed=seed)
        other[(seed, fold)] = {initial_backbone_hash(ds, cfg, m, fold, tmp_path / f"{m}{seed}{fold}", monkeypatch)
                               for m in KINDS}
    assert other[(0, 0)] == {init0}  # the early stop sees what the full runs recorded
    for key in ((1, 0), (0, 1)):
        assert len(other[key]) == 1, key  # every kind agrees on the other seed or fold too
        assert init0 not in other[key], key  # and it is another initialisation
    assert other[(1, 0)] != other[(0, 1)]


@pytest.mark.parametrize("config_file", ["config.yaml", "presets/paper.yaml"])
def test_every_configured_method_gets_the_same_footing(config_file):
    """Every method the configs list (the 10x/5x-only ablations too) shares the model, the BatchNorm policy and the
    budget settings, and its real builder gives the fold's one initial backbone."""
    from msamil.config import method_settings
    from msamil.models import build_model
    from msamil.models.backbone import create_backbone

    cfg = yaml.safe_load((REPO / config_file).read_text())
    assert {"msamil_10x_only", "msamil_5x_only"} <= set(cfg["methods"])
    assert cfg["train"]["bn_calib_patches"] > 0 and cfg["baselines"]["match_views"] >= 0.5
    for method in cfg["methods"]:
        settings = method_settings(cfg, method)
        assert settings["model"] == cfg["model"] and settings["train"] == cfg["train"], method
    if config_file != "config.yaml":
        return  # the preset's efficientnet_b3 at 512 px is too big to build here; its settings are checked above
    seed = stream_seed(cfg["seed"], 1, "backbone")
    hashes = {}
    for method, spec in cfg["methods"].items():
        settings = method_settings(cfg, method)
        if spec["kind"] == "msamil":
            backbone = build_model(settings, 2, seed=seed).msfem.backbone
        else:
            backbone = create_backbone(dict(settings["model"]), seed=seed)
        hashes[method] = state_fingerprint(backbone)
    assert len(set(hashes.values())) == 1, hashes


# --------------------------------------------------------------------------------------------------- BatchNorm
def test_estimate_batchnorm_gives_the_statistics_of_the_given_patches():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU()).eval()
    bn = net[1]
    bn.momentum = 0.3
    imgs = np.random.default_rng(0).integers(0, 255, (12, 8, 8, 3), dtype=np.uint8)

    def prepare(x: torch.Tensor) -> torch.Tensor:
        return x.permute(0, 3, 1, 2).float() / 255

    assert estimate_batchnorm(net, imgs, prepare, batch=4) == 12
    with torch.no_grad():
        acts = [net[0](prepare(torch.as_tensor(imgs[i:i + 4]))) for i in range(0, 12, 4)]
    mean = torch.stack([a.mean(dim=(0, 2, 3)) for a in acts]).mean(0)  # cumulative average over batches
    var = torch.stack([a.transpose(0, 1).reshape(4, -1).var(1, unbiased=True) for a in acts]).mean(0)
    torch.testing.assert_close(bn.running_mean, mean, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(bn.running_var, var, rtol=1e-5, atol=1e-6)
    assert not bn.training and bn.momentum == 0.3  # the caller's mode and momentum are back


def test_every_frozen_backbone_is_calibrated_on_the_folds_training_slides(ds, runs):
    cfg, record = runs
    train = _split(ds, 0, "train")
    expected = {"msamil": cfg["train"]["epochs"] + 1,  # before the first step, after every epoch
                "msamil_frozen": 1, "abmil": 1, "dino_abmil": 1,  # the frozen features / DINO's teacher
                "icmil_abmil": cfg["baselines"]["icmil"]["rounds"] + 1}  # round 0 and after each round
    for method, rec in record.items():
        cals = rec["calibrations"]
        assert len(cals) == expected[method], method
        for cal in cals:
            assert cal["slides"] == train and cal["n"] == BN_CALIB and cal["used"] == BN_CALIB, method
            assert any(not torch.allclose(s, torch.zeros_like(s)) for s in cal["stats"]), method
    # ABMIL and ICMIL's round 0 embed with the same calibrated backbone: identical first-round statistics
    for a, b in zip(record["abmil"]["calibrations"][0]["stats"], record["icmil_abmil"]["calibrations"][0]["stats"],
                    strict=True):
        assert torch.equal(a, b)


def _rewrite_cache(path: Path, seed: int) -> None:
    with h5py.File(path, "r+") as f:
        imgs = f["20x/imgs"]
        imgs[...] = np.random.default_rng(seed).integers(0, 255, imgs.shape, dtype=np.uint8)


def _embedder_bn(run_dir: Path) -> dict[str, torch.Tensor]:
    state = torch.load(run_dir / "best.pt", weights_only=False)["embedder"]
    return {k: v for k, v in state.items() if k.endswith(("running_mean", "running_var"))}


def test_frozen_features_depend_on_training_slides_only(tmp_path):
    """ABMIL's embedder statistics change when a training slide changes and not when a test slide does."""
    ds = fake_dataset(tmp_path / "data")
    cfg = tiny_config(ds["classes"])
    base = _embedder_bn(run_method(ds, cfg, "abmil", 0, tmp_path / "base"))
    assert any(not torch.allclose(v, torch.ones_like(v)) for k, v in base.items() if k.endswith("var"))
    caches = {p.stem: p for p in ds["caches"]}
    _rewrite_cache(caches[_split(ds, 0, "test")[0]], 1)
    same = _embedder_bn(run_method(ds, cfg, "abmil", 0, tmp_path / "test_changed"))
    assert all(torch.equal(same[k], base[k]) for k in base)
    _rewrite_cache(caches[_split(ds, 0, "train")[0]], 2)
    moved = _embedder_bn(run_method(ds, cfg, "abmil", 0, tmp_path / "train_changed"))
    assert any(not torch.equal(moved[k], base[k]) for k in base)


# ------------------------------------------------------------------------------------------------------ budgets
def test_efficiency_states_every_methods_budget(ds, runs):
    cfg, record = runs
    n_train = len(_split(ds, 0, "train"))
    tcfg, dcfg = cfg["train"], cfg["baselines"]["dino"]
    target = msamil_views(cfg, n_train)
    for method, rec in record.items():
        eff = rec["eff"]
        assert {"backbone_steps", "backbone_patch_views", "wall_s", "peak_mem_mb"} <= set(eff), method
        assert eff["wall_s"] > 0 and eff["peak_mem_mb"] > 0, method
    msamil = record["msamil"]["eff"]
    assert msamil["backbone_steps"] == tcfg["epochs"] * math.ceil(n_train / tcfg["accum_slides"])
    assert msamil["backbone_patch_views"] == tcfg["epochs"] * n_train * tcfg["bag_size"] == target
    for method in ("msamil_frozen", "abmil"):
        assert record[method]["eff"]["backbone_steps"] == record[method]["eff"]["backbone_patch_views"] == 0
    dino = record["dino_abmil"]["eff"]
    loss = pd.read_csv(record["dino_abmil"]["dir"] / "dino_loss.tsv", sep="\t")
    assert dino["backbone_steps"] == len(loss)
    assert dino["backbone_patch_views"] == len(loss) * dcfg["batch_size"] * (2 + dcfg["n_local_crops"]) >= target
    icmil = record["icmil_abmil"]["eff"]
    assert icmil["backbone_patch_views"] == icmil["backbone_steps"] * cfg["baselines"]["icmil"]["batch_size"]
    assert icmil["backbone_patch_views"] >= target


@pytest.mark.parametrize("config_file", ["config.yaml", "presets/paper.yaml"])
@pytest.mark.parametrize("n_train", [3, 19, 420])
def test_matched_budgets_give_dino_and_icmil_msamils_patch_views(config_file, n_train):
    cfg = yaml.safe_load((REPO / config_file).read_text())
    frac = cfg["baselines"]["match_views"]
    assert frac is not None and frac >= 0.5  # no method below half of MsaMIL-Net's patch-views by default
    dino, icmil, info = matched_budgets(cfg["baselines"], cfg, n_train)
    target = info["target_views"]
    assert target >= frac * msamil_views(cfg, n_train)
    views_per_it = dino["batch_size"] * (2 + dino["n_local_crops"])
    dino_views = dino["epochs"] * math.ceil(dino["patches_per_epoch"] / dino["batch_size"]) * views_per_it
    assert target <= dino_views < target + dino["epochs"] * views_per_it
    icmil_views = icmil["rounds"] * icmil["iters"] * icmil["batch_size"]
    assert target <= icmil_views < target + icmil["rounds"] * icmil["batch_size"]
