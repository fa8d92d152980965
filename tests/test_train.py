"""End-to-end trainer on tiny fake bags: outputs, exact resume after a kill, schedule, stale-state handling.

The real cache/BagReader chain is covered by the workflow's end-to-end test; here a fake reader with the same
interface (sample(n, rng), chunks(size), Bag fields) keeps the tests fast and independent of the cache stage.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from msamil.training.schedule import WarmupCosine
from msamil.training.trainer import RESUME_DIR, run_training

torch.set_num_threads(1)
REPO = Path(__file__).resolve().parents[1]
SCALE_IDX = {"20x": 0, "10x": 1, "5x": 2}


@dataclass
class Bag:
    imgs: np.ndarray
    coords: np.ndarray
    scale_idx: np.ndarray
    index: np.ndarray
    width: int
    height: int


class FakeReader:
    """Quacks like msamil.cache.bags.BagReader over an .npz 'cache'."""

    def __init__(self, path, indices=None, scales=None):
        with np.load(path) as d:
            data = {k: d[k] for k in d.files}
        keep = np.isin(data["scale_idx"], [SCALE_IDX[s] for s in (scales or SCALE_IDX)])
        self.imgs, self.coords, self.scale = data["imgs"][keep], data["coords"][keep], data["scale_idx"][keep]
        self.index = np.arange(len(keep))[keep]
        self.width, self.height = int(data["width"]), int(data["height"])

    def __len__(self):
        return len(self.imgs)

    def bag(self, sel):
        return Bag(self.imgs[sel], self.coords[sel], self.scale[sel], self.index[sel], self.width, self.height)

    def sample_positions(self, n, rng, balanced=False):
        return np.sort(rng.choice(len(self.imgs), size=min(n, len(self.imgs)), replace=False))

    def sample(self, n, rng, balanced=False):
        return self.bag(self.sample_positions(n, rng, balanced))

    def chunks(self, size):
        for i in range(0, len(self.imgs), size):
            yield self.bag(np.arange(i, min(i + size, len(self.imgs))))


def make_dataset(root: Path, n_slides: int = 8, n_patches: int = 12, px: int = 16) -> dict:
    """Slides whose label shows as brighter patches, with slides.tsv, folds.tsv (one fold) and fake caches."""
    rng = np.random.default_rng(0)
    rows, caches = [], []
    for i in range(n_slides):
        slide, label = f"s{i:02d}", i % 2
        imgs = rng.integers(0, 160, size=(n_patches, px, px, 3)).astype(np.uint8) + np.uint8(60 * label)
        coords = rng.integers(0, 50, size=(n_patches, 2)) * 64
        scale = np.arange(n_patches) % 3
        path = root / "cache" / f"{slide}.h5"
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as fh:
            np.savez(fh, imgs=imgs, coords=coords, scale_idx=scale, width=3200, height=3200)
        rows.append({"slide": slide, "patient": f"p{i}", "label": ["benign", "malignant"][label]})
        caches.append(path)
    table = pd.DataFrame(rows)
    table.to_csv(root / "slides.tsv", sep="\t", index=False)
    split = ["train"] * 4 + ["val"] * 2 + ["test"] * 2
    folds = table.assign(fold=0, split=split[:n_slides])[["fold", "slide", "patient", "label", "split"]]
    folds.to_csv(root / "folds.tsv", sep="\t", index=False)
    return {"slides_tsv": root / "slides.tsv", "folds_tsv": root / "folds.tsv", "caches": caches,
            "selection": None}


def tiny_config(**train) -> dict:
    cfg = yaml.safe_load((REPO / "config.yaml").read_text())
    cfg["model"].update({"backbone": "test_efficientnet", "input_px": 32, "dim": 16, "token_layers": 1,
                         "token_heads": 2, "mhe_layers": 1, "mhe_heads": 2, "mhe_rank": 4, "n_queries": 3,
                         "dropout": 0.1})
    cfg["train"].update({"epochs": 2, "bag_size": 6, "micro_batch": 4, "accum_slides": 3, "warmup_epochs": 1,
                         "bn_calib_patches": 16, "infer_chunk": 5, "patience": 10, **train})
    cfg["methods"] = {"m": {"kind": "msamil", "sffm": False}, "m20": {"kind": "msamil", "sffm": False,
                                                                      "scales": ["20x"]}}
    return cfg


def _run(cfg, data, out, method="m", **kw):
    return run_training(cfg, "synthetic", method, 0, **data, out_dir=out, device="cpu",
                        reader_factory=FakeReader, progress=False, **kw)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("ds"))


@pytest.fixture(scope="module")
def full_run(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("full")
    metrics = _run(tiny_config(), data, out)
    return out, metrics


def test_run_writes_every_output(full_run):
    out, metrics = full_run
    for name in ("predictions.tsv", "metrics.json", "efficiency.json", "best.pt", "last.pt", "train_log.tsv",
                 "attention.h5"):
        assert (out / name).exists(), name
    assert not (out / RESUME_DIR / "last.pt").exists()
    preds = pd.read_csv(out / "predictions.tsv", sep="\t")
    assert preds["slide"].tolist() == ["s06", "s07"] and {"prob_0", "prob_1", "label", "fold"} <= set(preds)
    assert np.allclose(preds[["prob_0", "prob_1"]].sum(axis=1), 1.0, atol=1e-5)
    assert {"acc", "auc", "balanced_acc", "macro_f1"} <= set(metrics)
    eff = json.loads((out / "efficiency.json").read_text())
    assert eff["patches_per_slide"] == 12.0  # inference sees every patch, not a bag sample
    assert eff["device"] == "cpu" and eff["n_params"] > 0 and eff["train_patches_per_s"] > 0
    log = pd.read_csv(out / "train_log.tsv", sep="\t")
    assert log.columns.tolist() == ["epoch", "train_loss", "val_loss", "val_auc", "val_acc", "seconds", "lr"]
    assert log["epoch"].tolist() == [1, 2]
    with h5py.File(out / "attention.h5") as h5:
        assert h5.attrs["complete"] and set(h5) == {"s06", "s07"}
        g = h5["s06"]
        assert g["coords"].shape == (12, 2) and g["attention"].shape == (12,) and g["scale_idx"].shape == (12,)


def test_killed_after_epoch_one_resumes_to_the_same_weights(data, full_run, tmp_path):
    out_full, _ = full_run
    cfg = tiny_config()
    assert _run(cfg, data, tmp_path, stop_after_epoch=1) is None  # "killed" after epoch 1's checkpoint
    assert not (tmp_path / "metrics.json").exists()
    # Snakemake deletes a failed job's declared outputs; the mirror outside them carries the resume.
    (tmp_path / "last.pt").unlink()
    _run(cfg, data, tmp_path)
    a = torch.load(out_full / "last.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "last.pt", weights_only=True)["model"]
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    pa = pd.read_csv(out_full / "predictions.tsv", sep="\t")
    pb = pd.read_csv(tmp_path / "predictions.tsv", sep="\t")
    pd.testing.assert_frame_equal(pa, pb)


def test_finished_state_only_reruns_inference(data, full_run, tmp_path):
    out_full, _ = full_run
    for name in ("last.pt", "best.pt"):
        (tmp_path / name).write_bytes((out_full / name).read_bytes())
    _run(tiny_config(), data, tmp_path)
    # no epoch ran: the log is rewritten from the saved history (Snakemake deleted it before the rerun)
    logs = [pd.read_csv(d / "train_log.tsv", sep="\t") for d in (out_full, tmp_path)]
    assert logs[1]["epoch"].tolist() == [1, 2] and logs[1]["val_auc"].equals(logs[0]["val_auc"])
    assert (tmp_path / "predictions.tsv").read_text() == (out_full / "predictions.tsv").read_text()


def test_state_from_other_settings_is_not_resumed(data, full_run, tmp_path):
    out_full, _ = full_run
    (tmp_path / "last.pt").write_bytes((out_full / "last.pt").read_bytes())
    _run(tiny_config(epochs=1, lr=1e-3), data, tmp_path)
    assert len(pd.read_csv(tmp_path / "train_log.tsv", sep="\t")) == 1


def test_early_stopping_and_single_scale_method(data, tmp_path):
    cfg = tiny_config(epochs=5, patience=1, bn_calib_patches=0)
    _run(cfg, data, tmp_path, method="m20")
    log = pd.read_csv(tmp_path / "train_log.tsv", sep="\t")
    assert 2 <= len(log) <= 5
    with h5py.File(tmp_path / "attention.h5") as h5:
        assert set(np.unique(h5["s06"]["scale_idx"][:])) == {0}


def test_sffm_method_without_selection_is_a_config_error(data, tmp_path):
    cfg = copy.deepcopy(tiny_config())
    cfg["methods"]["m"]["sffm"] = True
    with pytest.raises(Exception, match="selection"):
        _run(cfg, data, tmp_path)


def test_warmup_then_cosine():
    f = WarmupCosine(total=10, warmup=2)
    values = [f(s) for s in range(11)]
    assert values[0] < values[1] < values[2] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(values[2:], values[3:], strict=False)) and values[10] == pytest.approx(0.0)


def _write_h5_cache(path: Path, slide: str, label: int, rng: np.random.Generator, px: int = 16) -> None:
    """A cache in the CONTRACT layout (root attrs, one group per scale), as msamil.cache.writer writes it."""
    with h5py.File(path, "w") as h5:
        h5.attrs.update({"slide": slide, "width": 1024, "height": 768, "patch_px": px, "mpp": 0.5,
                         "complete": True})
        for k, scale in enumerate(("20x", "10x", "5x")):
            n = 6 - 2 * k
            g = h5.create_group(scale)
            g.create_dataset("coords", data=np.stack([np.arange(n) * 64 * 2**k, np.zeros(n)], 1).astype(np.int64))
            imgs = rng.integers(0, 160, size=(n, px, px, 3)).astype(np.uint8) + np.uint8(60 * label)
            g.create_dataset("imgs", data=imgs, chunks=(1, px, px, 3))
            g.attrs["patch_size_level0"] = 64 * 2**k


def test_real_bag_reader_and_sffm_selection(tmp_path):
    """The trainer on msamil.cache.bags.BagReader and msamil.lesion.sffm.load_selection: only kept patches are used."""
    data = make_dataset(tmp_path)  # slides.tsv / folds.tsv; caches replaced by real HDF5 ones below
    rng = np.random.default_rng(1)
    kept = {"20x": [0, 2, 3], "10x": [1], "5x": []}
    with h5py.File(tmp_path / "selection.h5", "w") as sel:
        for i, path in enumerate(data["caches"]):
            _write_h5_cache(path, path.stem, i % 2, rng)
            g = sel.create_group(path.stem)
            for scale, idx in kept.items():
                g.create_group(scale).create_dataset("kept", data=np.asarray(idx, dtype=np.int64))
        sel.attrs["complete"] = True
    cfg = tiny_config(epochs=1)
    cfg["methods"]["m"]["sffm"] = True
    out = tmp_path / "run"
    run_training(cfg, "synthetic", "m", 0, **{**data, "selection": tmp_path / "selection.h5"}, out_dir=out,
                 device="cpu", progress=False)
    with h5py.File(out / "attention.h5") as h5:
        g = h5["s06"]
        assert sorted(zip(g["scale_idx"][:].tolist(), g["index"][:].tolist(), strict=True)) == [
            (0, 0), (0, 2), (0, 3), (1, 1)]


def test_class_interleaved_order_mixes_every_pair_and_keeps_all_slides():
    from msamil.training.data import class_interleaved_order

    labels = [0, 0, 0, 0, 1, 1, 1, 1, 1, 1]
    order = class_interleaved_order(labels, np.random.default_rng(0))
    assert sorted(order.tolist()) == list(range(10))
    pairs = [{labels[i] for i in order[k:k + 2]} for k in range(0, 8, 2)]
    assert all(p == {0, 1} for p in pairs)  # while both classes last, each accumulation pair holds both
    again = class_interleaved_order(labels, np.random.default_rng(0))
    assert again.tolist() == order.tolist()
