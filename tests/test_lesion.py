"""Lesion masks from annotations and the per-fold U-Net++ (tiny arrays, CPU, a few epochs)."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pandas as pd
import pytest
import shapely
from shapely.geometry import shape

from msamil.lesion.annotation_masks import (
    has_annotation,
    iter_polygons,
    lesion_mask,
    mask_shape,
    rasterize_polygons,
)

POLYGONS = {
    "type": "FeatureCollection",
    "features": [
        {"type": "Feature", "properties": {"classification": {"name": "Tumor"}},
         "geometry": {"type": "Polygon", "coordinates": [
             [[100, 100], [900, 120], [800, 700], [150, 600], [100, 100]],
             [[300, 300], [500, 300], [500, 450], [300, 450], [300, 300]]]}},
        {"type": "Feature", "properties": {},
         "geometry": {"type": "MultiPolygon", "coordinates": [
             [[[1000, 1000], [1300, 1000], [1150, 1400], [1000, 1000]]],
             [[[1400, 200], [1700, 260], [1650, 500], [1400, 200]]]]}},
        {"type": "Feature", "properties": {}, "geometry": {"type": "Point", "coordinates": [5, 5]}},
    ],
}


def test_mask_shape_is_ceil_of_physical_size() -> None:
    assert mask_shape(3072, 2048, 0.5, 8.0) == (128, 192)
    assert mask_shape(3073, 2047, 0.5, 8.0) == (128, 193)


@pytest.mark.parametrize("mpp,seg_mpp", [(0.5, 8.0), (0.25, 4.0), (0.5, 2.0)])
def test_rasterised_area_matches_polygon_area(tmp_path, mpp: float, seg_mpp: float) -> None:
    path = tmp_path / "a.geojson"
    path.write_text(json.dumps(POLYGONS))
    mask = lesion_mask(path, 1800, 1500, mpp, seg_mpp)
    assert mask.shape == mask_shape(1800, 1500, mpp, seg_mpp)
    scale = mpp / seg_mpp
    geoms = [shape(f["geometry"]) for f in POLYGONS["features"] if f["geometry"]["type"] != "Point"]
    area = sum(shapely.affinity.scale(g, scale, scale, origin=(0, 0)).area for g in geoms)
    border = sum(shapely.affinity.scale(g, scale, scale, origin=(0, 0)).length for g in geoms)
    assert abs(mask.sum() - area) <= border  # within a one-pixel band along the outline
    # the hole stays empty: its centre at level-0 (400, 375)
    assert not mask[int(375 * scale), int(400 * scale)]
    assert mask[int(200 * scale), int(200 * scale)]


def test_polygon_outside_and_list_form() -> None:
    feats = [{"type": "Feature", "geometry": {"type": "Polygon",
                                              "coordinates": [[[-50, -50], [20, -50], [20, 20], [-50, 20]]]}}]
    mask = rasterize_polygons(iter_polygons(feats), (10, 10), 0.1)
    assert mask.sum() == 4 and mask[:2, :2].all()  # mask coords -5..2: the centres of the top-left 2x2 pixels
    empty = rasterize_polygons(iter_polygons({"type": "FeatureCollection", "features": []}), (4, 4), 1.0)
    assert not empty.any()


def test_mask_image_red_is_lesion(tmp_path) -> None:
    img = np.zeros((400, 600, 3), np.uint8)
    img[0:200, 0:300] = (0, 0, 255)  # BGR red: lesion
    img[200:, 300:] = (0, 255, 0)  # green: stroma, not lesion
    path = tmp_path / "m.png"
    cv2.imwrite(str(path), img)
    mask = lesion_mask(path, 600, 400, 1.0, 10.0)
    assert mask.shape == (40, 60)
    assert mask[:20, :30].all() and not mask[20:, :].any() and not mask[:, 30:].any()
    grey = np.zeros((400, 600), np.uint8)
    grey[100:300, 100:200] = 1
    cv2.imwrite(str(path), grey)
    assert lesion_mask(path, 600, 400, 1.0, 10.0).sum() == 20 * 10


def test_has_annotation() -> None:
    assert not has_annotation("") and not has_annotation(float("nan")) and not has_annotation(None)
    assert has_annotation("raw/annotations/a.geojson")


# ------------------------------------------------------------------------------------------------- U-Net++
torch = pytest.importorskip("torch")
from msamil.lesion.unetpp import NoLesionError, SegSample, predict_logits, train_unetpp  # noqa: E402

TINY = {"encoder": "resnet18", "tile_px": 64, "epochs": 3, "batch_size": 4, "lr": 2e-3, "prob_threshold": 0.5,
        "seg_mpp": 8.0, "encoder_weights": None}


def blob_slide(rng: np.random.Generator, lesion: bool, rows: int = 64, cols: int = 80) -> SegSample:
    img = np.full((rows, cols, 3), 240, np.uint8)
    img[6:-6, 6:-6] = (205, 125, 185)
    mask = np.zeros((rows, cols), bool)
    if lesion:
        r, c = rng.integers(16, rows - 16), rng.integers(16, cols - 16)
        yy, xx = np.mgrid[:rows, :cols]
        mask = (yy - r) ** 2 + (xx - c) ** 2 < 10**2
        img[mask] = (80, 25, 110)
    img = np.clip(img + rng.normal(0, 6, img.shape), 0, 255).astype(np.uint8)
    return SegSample(f"s{rng.integers(1000)}", img, mask)


def test_training_lowers_loss_and_writes_outputs(tmp_path) -> None:
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    train = [blob_slide(rng, i % 2 == 0) for i in range(4)]
    val = [blob_slide(rng, True), blob_slide(rng, False)]
    hist = train_unetpp(train, val, TINY, tmp_path / "unetpp.pt", tmp_path / "history.tsv", seed=0, fold=2)
    written = pd.read_csv(tmp_path / "history.tsv", sep="\t")
    assert list(written.columns) == ["epoch", "train_loss", "val_loss", "val_iou"]
    assert len(written) == TINY["epochs"] and np.allclose(written["train_loss"], hist["train_loss"], atol=1e-5)
    assert hist["train_loss"].iloc[-1] < hist["train_loss"].iloc[0]
    assert written["val_iou"].between(0, 1).all()
    ckpt = torch.load(tmp_path / "unetpp.pt", weights_only=False)
    assert ckpt["epoch"] == int(written["epoch"][written["val_iou"].idxmax()]) and ckpt["fold"] == 2
    assert not list(tmp_path.glob(".*"))  # no temporary files left


def test_no_lesion_in_training_slides_names_the_fold(tmp_path) -> None:
    rng = np.random.default_rng(1)
    train = [blob_slide(rng, False), blob_slide(rng, False), SegSample("unannotated", train_img(rng), None)]
    with pytest.raises(NoLesionError, match="fold 3"):
        train_unetpp(train, [], TINY, tmp_path / "m.pt", tmp_path / "h.tsv", fold=3)
    assert not (tmp_path / "m.pt").exists()


def train_img(rng: np.random.Generator) -> np.ndarray:
    return rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)


def test_windowed_prediction_matches_single_pass() -> None:
    """A big image goes through overlapping windows; for a local model the stitched map equals one full pass."""
    torch.manual_seed(0)
    model = torch.nn.Conv2d(3, 1, 3, padding=1).eval()
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (140, 150, 3), dtype=np.uint8)
    tiled = predict_logits(model, image, tile=16)  # window 64, margin 8: many windows
    whole = predict_logits(model, image, tile=160)  # one window
    assert tiled.shape == whole.shape == (140, 150)
    np.testing.assert_allclose(tiled[1:-1, 1:-1], whole[1:-1, 1:-1], rtol=1e-5, atol=1e-5)


def test_training_is_seeded(tmp_path) -> None:
    """Same seed, same data -> the same first epoch, bit for bit (CPU)."""
    torch.set_num_threads(1)
    cfg = {**TINY, "epochs": 1}
    runs = []
    for i in range(2):
        rng = np.random.default_rng(5)
        train = [blob_slide(rng, True), blob_slide(rng, False)]
        runs.append(train_unetpp(train, [blob_slide(rng, True)], cfg, tmp_path / f"m{i}.pt", tmp_path / f"h{i}.tsv",
                                 seed=4, fold=1))
    pd.testing.assert_frame_equal(runs[0], runs[1])


def test_local_encoder_weights_are_loaded(tmp_path) -> None:
    from msamil.errors import ConfigError
    from msamil.lesion.unetpp import build_model

    torch.manual_seed(1)
    source = build_model("resnet18")
    torch.save(source.encoder.state_dict(), tmp_path / "enc.pt")
    torch.manual_seed(2)
    model = build_model("resnet18", str(tmp_path / "enc.pt"))
    for key, value in source.encoder.state_dict().items():
        assert torch.equal(model.encoder.state_dict()[key], value)
    with pytest.raises(ConfigError, match="encoder_weights"):
        build_model("resnet18", str(tmp_path / "missing.pt"))


def test_rule_entry_points_on_slide_files(tmp_path, caplog) -> None:
    """Train on a fold's annotated train slides (unannotated skipped and counted), infer a map for every slide."""
    import h5py

    from msamil.lesion.unetpp import run_lesion_infer, run_lesion_train
    from tests.slide_fixtures import write_aperio

    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    rows, split_rows = [], []
    plan = [("train", True), ("train", False), ("train", None), ("val", True), ("test", True)]
    for i, (split, lesion) in enumerate(plan):
        sample = blob_slide(rng, bool(lesion), rows=48, cols=64)  # 48x64 at 8 um/px = 768x1024 at 0.5
        rgb = cv2.resize(sample.image, (1024, 768), interpolation=cv2.INTER_NEAREST)
        path = write_aperio(tmp_path / f"s{i}.svs", rgb, 0.5)
        annotation = ""
        if lesion is not None:
            contours, _ = cv2.findContours(sample.mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
            feats = [{"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [
                (np.vstack([c[:, 0], c[:1, 0]]) * 16 + 8).tolist()]}} for c in contours]
            annotation = str(tmp_path / f"s{i}.geojson")
            (tmp_path / f"s{i}.geojson").write_text(json.dumps({"type": "FeatureCollection", "features": feats}))
        rows.append({"slide": f"s{i}", "patient": f"p{i}", "label": "malignant" if lesion else "benign",
                     "path": str(path), "annotation": annotation, "mpp": 0.5, "width": 1024, "height": 768})
        split_rows.append({"fold": 0, "slide": f"s{i}", "patient": f"p{i}", "label": rows[-1]["label"],
                           "split": split})
    pd.DataFrame(rows).to_csv(tmp_path / "slides.tsv", sep="\t", index=False)
    pd.DataFrame(split_rows).to_csv(tmp_path / "folds.tsv", sep="\t", index=False)
    cfg = {**TINY, "epochs": 1, "tile_px": 32}
    with caplog.at_level("INFO", logger="msamil"):
        hist = run_lesion_train(str(tmp_path / "slides.tsv"), str(tmp_path / "folds.tsv"), 0, cfg,
                                str(tmp_path / "out" / "unetpp.pt"), str(tmp_path / "out" / "history.tsv"))
    assert "fold 0 train: 3 slides, 2 annotated, 1 without annotation skipped" in caplog.text
    assert len(hist) == 1 and np.isfinite(hist["val_iou"]).all()
    times = run_lesion_infer(str(tmp_path / "slides.tsv"), str(tmp_path / "out" / "unetpp.pt"),
                             str(tmp_path / "out" / "probmaps.h5"))
    assert sorted(times) == [f"s{i}" for i in range(5)]
    with h5py.File(tmp_path / "out" / "probmaps.h5", "r") as h5:
        assert h5.attrs["complete"]
        for i in range(5):
            ds = h5[f"s{i}"]
            assert ds.shape == (48, 64) and ds.dtype == np.uint8 and ds.attrs["mpp"] == 8.0
