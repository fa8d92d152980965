"""Dataset definitions and annotation parsers on small fixtures written in each dataset's real layout and format."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import shapely
import yaml
from shapely.geometry import shape

from msamil.datasets import annotation_formats as ann
from msamil.datasets.convert import convert_to_tiff
from msamil.datasets.registry import DATASETS, build_tables, scan, write_dataset_tables
from msamil.errors import ConfigError
from msamil.slides.table import read_slide_table

REPO = Path(__file__).resolve().parents[1]
DP_POS = "2018_64982_1-3_2019-02-25 21_57_36-lv0-33516-59515-2003-2010"
DP_NEG = "D20190220101_2019-06-10 14_43_05-lv1-1-2-3-4"


def _tissue(width: int, height: int, seed: int) -> np.ndarray:
    """A pink blob on white, so tissue detection downstream finds something (BGR for cv2)."""
    rng = np.random.default_rng(seed)
    img = np.full((height, width, 3), 245, np.uint8)
    cv2.ellipse(img, (width // 2, height // 2), (width * 2 // 5, height * 2 // 5), 0, 0, 360, (180, 90, 200), -1)
    noise = rng.integers(-8, 8, img.shape)
    return np.clip(img.astype(int) + noise, 0, 255).astype(np.uint8)


def _asap_xml(path: Path, rings: list[tuple[str, str, list[tuple[float, float]]]]) -> None:
    parts = ["<?xml version=\"1.0\"?>", "<ASAP_Annotations>", "<Annotations>"]
    for i, (kind, group, ring) in enumerate(rings):
        parts.append(f'<Annotation Name="Annotation {i}" Type="{kind}" PartOfGroup="{group}" Color="#F4FA58">')
        parts.append("<Coordinates>")
        parts += [f'<Coordinate Order="{j}" X="{x}" Y="{y}" />' for j, (x, y) in enumerate(ring)]
        parts += ["</Coordinates>", "</Annotation>"]
    parts += ["</Annotations>", "<AnnotationGroups>",
              '<Group Name="_0" PartOfGroup="None" Color="#FF0000"><Attributes /></Group>',
              '<Group Name="_2" PartOfGroup="None" Color="#00FF00"><Attributes /></Group>',
              "</AnnotationGroups>", "</ASAP_Annotations>"]
    path.write_text("\n".join(parts))


def _square(x0: float, y0: float, x1: float, y1: float) -> list[tuple[float, float]]:
    return [(x0, y0), (x1, y0), (x1, y1), (x0, y1)]


def make_fake_datasets(base: Path, size: tuple[int, int] = (600, 400)) -> dict[str, Path]:
    """Tiny copies of the four datasets in their publishers' layouts (what `source: local` points at).

    The default size is enough for parsing; the workflow test asks for images large enough (in µm) to hold
    tissue by the default tissue settings."""
    w, h = size
    roots = {name: base / name for name in ("DigestPath2019", "BCNB", "UBC-OCEAN", "CAMELYON16")}
    # DigestPath2019 task 2: malignant images with JPEG masks, benign images without
    dp = roots["DigestPath2019"]
    (dp / "tissue-train-pos-v1").mkdir(parents=True)
    (dp / "tissue-train-neg").mkdir(parents=True)
    for i in range(2):
        stem = DP_POS.replace("64982", f"6498{i}")
        cv2.imwrite(str(dp / "tissue-train-pos-v1" / f"{stem}.jpg"), _tissue(w, h, i))
        mask = np.zeros((h, w), np.uint8)
        mask[h // 3: h // 2, w // 3: w // 2] = 255
        cv2.imwrite(str(dp / "tissue-train-pos-v1" / f"{stem}_mask.jpg"), mask)
        cv2.imwrite(str(dp / "tissue-train-neg" / f"{DP_NEG.replace('101', f'10{i}')}.jpg"), _tissue(w, h, 10 + i))
    # BCNB: WSIs/<id>.jpg + <id>.json, clinical table
    bc = roots["BCNB"]
    (bc / "WSIs").mkdir(parents=True)
    for pid in (1, 2, 3):
        cv2.imwrite(str(bc / "WSIs" / f"{pid}.jpg"), _tissue(w, h, 20 + pid))
        poly = {"positive": [{"name": "Annotation 0", "vertices": _square(w / 4, h / 4, w / 2, h / 2)}],
                "negative": []}
        (bc / "WSIs" / f"{pid}.json").write_text(json.dumps(poly))
    pd.DataFrame({"Patient ID": [1, 2, 3], "Age(years)": [50, 60, 70],
                  "ALN status": ["N0", "N+(1-2)", "N+(>2)"]}).to_csv(bc / "patient-clinical-data.csv", index=False)
    # UBC-OCEAN: train.csv, train_images/<id>.png, supplemental masks (RGB, red = tumour)
    ub = roots["UBC-OCEAN"]
    (ub / "train_images").mkdir(parents=True)
    (ub / "train_supplemental_masks").mkdir(parents=True)
    rows = [(4, "HGSC", False), (66, "LGSC", False), (91, "CC", True), (281, "EC", False), (286, "MC", True)]
    for image_id, _, _ in rows:
        cv2.imwrite(str(ub / "train_images" / f"{image_id}.png"), _tissue(w, h, image_id))
    mask = np.zeros((h, w, 3), np.uint8)
    mask[h // 4: h // 2, w // 4: w // 2] = (0, 0, 255)  # BGR red
    mask[h // 2:, w // 2:] = (0, 255, 0)  # stroma, not tumour
    cv2.imwrite(str(ub / "train_supplemental_masks" / "4.png"), mask)
    pd.DataFrame({"image_id": [r[0] for r in rows], "label": [r[1] for r in rows],
                  "image_width": w, "image_height": h, "is_tma": [r[2] for r in rows]}).to_csv(
        ub / "train.csv", index=False)
    # CAMELYON16: pyramidal TIFFs with MPP, ASAP XML, reference.csv for the test set
    cm = roots["CAMELYON16"]
    for sub in ("images", "annotations", "evaluation"):
        (cm / sub).mkdir(parents=True)
    for i, name in enumerate(("normal_001", "tumor_001", "test_001", "test_002")):
        png = base / f"{name}.png"
        cv2.imwrite(str(png), _tissue(w, h, 40 + i))
        convert_to_tiff(png, cm / "images" / f"{name}.tif", 0.25)
        png.unlink()
    _asap_xml(cm / "annotations" / "tumor_001.xml", [("Polygon", "_0", _square(100, 100, 300, 300))])
    (cm / "evaluation" / "reference.csv").write_text("test_001,Tumor,Macro\ntest_002,Normal\n")
    return roots


# ------------------------------------------------------------------------------------------------ parsers
def test_digestpath_mask_png_gives_the_lesion(tmp_path: Path) -> None:
    mask = np.zeros((400, 400), np.uint8)
    mask[50:150, 100:300] = 255
    cv2.imwrite(str(tmp_path / "m.jpg"), mask)
    geom = ann.parse_mask(tmp_path / "m.jpg", kind="digestpath_mask")
    assert abs(geom.area - 200 * 100) / 20000 < 0.05
    x0, y0, x1, y1 = geom.bounds
    assert abs(x0 - 100) <= 2 and abs(y0 - 50) <= 2 and abs(x1 - 300) <= 2 and abs(y1 - 150) <= 2


def test_mask_holes_survive_and_large_masks_are_shrunk(tmp_path: Path) -> None:
    mask = np.zeros((400, 400), np.uint8)
    mask[40:360, 40:360] = 255
    mask[120:280, 120:280] = 0
    cv2.imwrite(str(tmp_path / "m.png"), mask)
    geom = ann.parse_mask(tmp_path / "m.png", kind="digestpath_mask", max_px=100)  # shrunk 4x
    assert len(geom.interiors) == 1
    assert abs(geom.area - (320**2 - 160**2)) / (320**2 - 160**2) < 0.05


def test_ubc_rgb_mask_red_only_scaled_to_slide(tmp_path: Path) -> None:
    mask = np.zeros((100, 200, 3), np.uint8)
    mask[10:30, 20:60] = (0, 0, 255)  # red (BGR) = tumour
    mask[50:90, 100:180] = (0, 255, 0)  # green = stroma
    mask[50:90, 20:60] = (255, 0, 0)  # blue = necrosis
    cv2.imwrite(str(tmp_path / "4.png"), mask)
    geom = ann.parse_mask(tmp_path / "4.png", slide_size=(800, 400), kind="ubc_mask")  # mask at 1/4 of the slide
    assert abs(geom.area - (40 * 4) * (20 * 4)) / (160 * 80) < 0.05
    assert geom.bounds == pytest.approx((80, 40, 240, 120), abs=5)


def test_bcnb_json_positive_minus_negative(tmp_path: Path) -> None:
    data = {"positive": [{"name": "Annotation 0", "vertices": _square(0, 0, 100, 100)},
                         {"name": "Annotation 1", "vertices": _square(200, 0, 250, 50)}],
            "negative": [{"name": "Annotation 2", "vertices": _square(25, 25, 75, 75)}]}
    (tmp_path / "1.json").write_text(json.dumps(data))
    geom = ann.parse_bcnb_json(tmp_path / "1.json")
    assert geom.area == pytest.approx(100 * 100 - 50 * 50 + 50 * 50)
    assert len(geom.geoms) == 2


def test_asap_xml_tumour_minus_exclusion(tmp_path: Path) -> None:
    _asap_xml(tmp_path / "tumor_001.xml", [
        ("Polygon", "_0", _square(1000.5, 2000, 3000.5, 4000)),
        ("Spline", "_1", _square(10000, 10000, 10100, 10100)),
        ("Polygon", "_2", _square(1500, 2500, 2000, 3000)),
        ("Dot", "_0", [(5, 5)]),
    ])
    geom = ann.parse_asap_xml(tmp_path / "tumor_001.xml")
    assert geom.area == pytest.approx(2000 * 2000 - 500 * 500 + 100 * 100)


def test_convert_annotation_writes_geojson(tmp_path: Path) -> None:
    (tmp_path / "1.json").write_text(json.dumps({"positive": [{"vertices": _square(0, 0, 10, 10)}]}))
    out = tmp_path / "out" / "1.geojson"
    assert ann.convert_annotation("bcnb_json", str(tmp_path / "1.json"), str(out)) == 1
    data = json.loads(out.read_text())
    assert data["type"] == "FeatureCollection"
    assert shape(data["features"][0]["geometry"]).area == pytest.approx(100)
    # the lesion stage's reader accepts it
    from msamil.lesion.annotation_masks import iter_polygons

    assert len(list(iter_polygons(data))) == 1


def test_lesion_free_slide_gets_an_empty_collection(tmp_path: Path) -> None:
    out = tmp_path / "benign.geojson"
    assert ann.convert_annotation("empty", [], str(out), slide="benign") == 0
    from msamil.lesion.annotation_masks import lesion_mask

    mask = lesion_mask(out, 1000, 800, 0.5, 8.0, "benign")
    assert mask.shape == (50, 63) and not mask.any()


def test_unparseable_annotation_is_a_slide_error(tmp_path: Path) -> None:
    from msamil.errors import SlideError

    (tmp_path / "bad.xml").write_text("<ASAP_Annotations><oops")
    with pytest.raises(SlideError, match="cannot parse annotation"):
        ann.convert_annotation("asap_xml", str(tmp_path / "bad.xml"), str(tmp_path / "o.geojson"), slide="t1")


# ------------------------------------------------------------------------------------------------ registry
@pytest.fixture(scope="module")
def fake_roots(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return make_fake_datasets(tmp_path_factory.mktemp("fake"))


def _cfg(name: str, **extra: object) -> dict:
    return {"source": "local", "classes": list(DATASETS[name].classes), **extra}


def test_digestpath_layout(fake_roots) -> None:
    table, plan = build_tables("digestpath2019", fake_roots["DigestPath2019"], _cfg("digestpath2019"))
    assert sorted(table["label"]) == ["benign", "benign", "malignant", "malignant"]
    assert all(" " not in s for s in table["slide"])
    mal = table[table["label"] == "malignant"]
    assert (table["annotation"] != "").all()  # benign images are known lesion-free: an empty GeoJSON
    kinds = plan.set_index("slide")["annotation_kind"]
    assert set(kinds[mal["slide"]]) == {"digestpath_mask"}
    assert set(kinds[table[table["label"] == "benign"]["slide"]]) == {"empty"}
    assert set(plan[plan["annotation_kind"] == "empty"]["annotation_source"]) == {""}
    assert set(mal["patient"]) == {"2018_64980_1-3", "2018_64981_1-3"}
    assert all(p.endswith(".tiff") and "/raw/slides/" in p for p in table["path"])
    assert (table["mpp"] == "").all() and (plan["mpp"] == "").all() and plan["convert"].all()  # nothing guessed
    given, given_plan = build_tables("digestpath2019", fake_roots["DigestPath2019"],
                                     _cfg("digestpath2019", default_mpp=0.475))
    assert (given["mpp"] == 0.475).all() and (given_plan["mpp"] == 0.475).all()
    assert set(given["mpp_source"]) == {"dataset_config.digestpath2019.default_mpp"}


def test_bcnb_layout_binary_and_three_class(fake_roots) -> None:
    table, _ = build_tables("bcnb", fake_roots["BCNB"], _cfg("bcnb"))
    assert dict(zip(table["slide"], table["label"], strict=True)) == {"1": "N0", "2": "N+", "3": "N+"}
    assert (table["annotation"] != "").all()
    three = _cfg("bcnb", classes=["N0", "N+(1-2)", "N+(>2)"], options={"aln_grouping": "three"})
    table3, _ = build_tables("bcnb", fake_roots["BCNB"], three)
    assert sorted(table3["label"]) == ["N+(1-2)", "N+(>2)", "N0"]


def test_ubc_layout_tma_mpp_and_masks(fake_roots) -> None:
    table, plan = build_tables("ubc_ocean", fake_roots["UBC-OCEAN"], _cfg("ubc_ocean"))
    assert (table["mpp"] == "").all() and (plan["mpp"] == "").all()  # no built-in wsi_mpp / tma_mpp
    given = _cfg("ubc_ocean", options={"wsi_mpp": 0.5, "tma_mpp": 0.25})
    table, plan = build_tables("ubc_ocean", fake_roots["UBC-OCEAN"], given)
    mpp = dict(zip(table["slide"], table["mpp"], strict=True))
    assert mpp["91"] == 0.25 and mpp["4"] == 0.5
    src = dict(zip(table["slide"], table["mpp_source"], strict=True))
    assert src["91"] == "dataset_config.ubc_ocean.options.tma_mpp"
    assert src["4"] == "dataset_config.ubc_ocean.options.wsi_mpp"
    assert plan.set_index("slide").loc["286", "is_tma"]
    assert (table.set_index("slide")["annotation"] != "").to_dict() == {
        "4": True, "66": False, "91": False, "281": False, "286": False}
    no_tma, _ = build_tables("ubc_ocean", fake_roots["UBC-OCEAN"], _cfg("ubc_ocean", options={"include_tma": False}))
    assert sorted(no_tma[no_tma["exclude"] == ""]["slide"]) == ["281", "4", "66"]
    left_out = no_tma.set_index("slide").loc[["286", "91"], "exclude"]  # listed, with the reason, not dropped
    assert left_out.str.contains("include_tma: false").all()


@pytest.mark.parametrize("value", [None, 0.5])
def test_ubc_mpp_options_accept_null(fake_roots, value) -> None:
    """`wsi_mpp: null` (unknown) is valid and means no MPP, never a TypeError or a default."""
    table, plan = build_tables("ubc_ocean", fake_roots["UBC-OCEAN"],
                               _cfg("ubc_ocean", options={"wsi_mpp": value, "tma_mpp": None}))
    wsi = table.set_index("slide").loc["4"]
    assert wsi["mpp"] == ("" if value is None else value)
    assert wsi["mpp_source"] == ("" if value is None else "dataset_config.ubc_ocean.options.wsi_mpp")
    assert plan.set_index("slide").loc["91", "mpp"] == ""  # TMA: tma_mpp null


@pytest.mark.parametrize("bad", [0, -0.5, "0.5um", True])
def test_ubc_mpp_options_reject_non_mpps(fake_roots, bad) -> None:
    with pytest.raises(ConfigError, match="wsi_mpp.*not an MPP"):
        build_tables("ubc_ocean", fake_roots["UBC-OCEAN"], _cfg("ubc_ocean", options={"wsi_mpp": bad}))


def test_no_dataset_definition_carries_an_mpp() -> None:
    """No built-in guess: MPPs come from files or from the user (slide table, options, default_mpp)."""
    for defn in DATASETS.values():
        assert not hasattr(defn, "default_mpp")
        assert all(defn.options.get(key) is None for key in ("wsi_mpp", "tma_mpp"))


def test_camelyon_layout_uses_native_tiffs(fake_roots) -> None:
    table, plan = build_tables("camelyon16", fake_roots["CAMELYON16"], _cfg("camelyon16"))
    labels = dict(zip(table["slide"], table["label"], strict=True))
    assert labels == {"normal_001": "normal", "test_001": "tumor", "test_002": "normal", "tumor_001": "tumor"}
    assert not plan["convert"].any() and all(p.endswith(".tif") for p in table["path"])
    assert (table["mpp"] == "").all()  # the files carry their own MPP
    rows = table.set_index("slide")
    assert rows.loc["tumor_001", "annotation"].endswith("tumor_001.geojson")
    assert rows.loc["normal_001", "annotation"] and not rows.loc["test_001", "annotation"]  # tumour, no XML: unknown


def test_slide_table_overrides_and_errors(fake_roots, tmp_path: Path) -> None:
    overrides = tmp_path / "over.tsv"
    pd.DataFrame({"slide": ["1", "2"], "patient": ["P1", "P1"], "mpp": ["0.3", ""]}).to_csv(
        overrides, sep="\t", index=False)
    table, _ = build_tables("bcnb", fake_roots["BCNB"], _cfg("bcnb", slide_table=str(overrides), default_mpp=0.5))
    rows = table.set_index("slide")
    assert rows.loc["1", "patient"] == rows.loc["2", "patient"] == "P1"
    assert rows.loc["1", "mpp"] == 0.3 and rows.loc["2", "mpp"] == 0.5
    assert rows.loc["1", "mpp_source"] == "dataset_config.bcnb.slide_table"
    assert rows.loc["2", "mpp_source"] == "dataset_config.bcnb.default_mpp"
    with pytest.raises(ConfigError, match="unknown key"):
        scan("bcnb", fake_roots["BCNB"], _cfg("bcnb", options={"aln_groupin": "binary"}))
    with pytest.raises(ConfigError, match="not in dataset_config.bcnb.classes"):
        scan("bcnb", fake_roots["BCNB"], _cfg("bcnb", classes=["N0", "N1"]))
    with pytest.raises(ConfigError, match="no clinical table"):
        scan("bcnb", fake_roots["UBC-OCEAN"], _cfg("bcnb"))


def test_write_dataset_tables_from_manifest(fake_roots, tmp_path: Path) -> None:
    manifest = tmp_path / "source.json"
    manifest.write_text(json.dumps({"root": str(fake_roots["UBC-OCEAN"])}))
    write_dataset_tables("ubc_ocean", str(manifest), _cfg("ubc_ocean"), str(tmp_path / "t.tsv"),
                         str(tmp_path / "s.tsv"))
    table = pd.read_csv(tmp_path / "t.tsv", sep="\t", dtype=str)
    assert list(table.columns) == ["slide", "patient", "label", "path", "annotation", "mpp", "mpp_source", "exclude"]
    assert len(pd.read_csv(tmp_path / "s.tsv", sep="\t")) == 5
    # the same table format as a user's cohort: read back, the paths are where build_tables put them
    assert sorted(read_slide_table(tmp_path / "t.tsv")["path"]) == sorted(
        build_tables("ubc_ocean", fake_roots["UBC-OCEAN"], _cfg("ubc_ocean"), str(tmp_path.parents[1]))[0]["path"])


def test_no_scanned_file_is_dropped_silently(tmp_path: Path) -> None:
    """Camelyon16: a file with an unusual name, a test slide missing from reference.csv: listed and excluded with
    the reason; a slide_table row labels one of them, and adds a slide the scanner cannot know."""
    roots = make_fake_datasets(tmp_path / "data")
    images = roots["CAMELYON16"] / "images"
    (images / "patient_7_node_2.tif").write_bytes((images / "normal_001.tif").read_bytes())
    (images / "test_003.tif").write_bytes((images / "normal_001.tif").read_bytes())
    (images / "testicle_1.tif").write_bytes((images / "normal_001.tif").read_bytes())
    table, _ = build_tables("camelyon16", roots["CAMELYON16"], _cfg("camelyon16"))
    rows = table.set_index("slide")
    assert len(rows) == 7
    assert "its name is not normal_NNN" in rows.loc["patient_7_node_2", "exclude"]
    assert "its name is not normal_NNN" in rows.loc["testicle_1", "exclude"]  # not taken for a test slide
    assert "no row in reference.csv" in rows.loc["test_003", "exclude"]
    assert (rows.loc[["normal_001", "tumor_001", "test_001", "test_002"], "exclude"] == "").all()

    extra = tmp_path / "extra.tif"
    extra.write_bytes((images / "normal_001.tif").read_bytes())
    over = tmp_path / "over.csv"
    pd.DataFrame({"slide": ["patient_7_node_2", "mine", "ghost"], "label": ["tumor", "normal", "normal"],
                  "path": ["", "extra.tif", ""]}).to_csv(over, index=False)
    table, _ = build_tables("camelyon16", roots["CAMELYON16"], _cfg("camelyon16", slide_table=str(over)))
    rows = table.set_index("slide")
    assert rows.loc["patient_7_node_2", "label"] == "tumor" and rows.loc["patient_7_node_2", "exclude"] == ""
    assert rows.loc["mine", "path"] == str(extra) and rows.loc["mine", "exclude"] == ""
    assert "found no such slide" in rows.loc["ghost", "exclude"]


# ------------------------------------------------------------------------------------------------ preset
def test_paper_preset_validates_and_matches_the_paper() -> None:
    from snakemake.utils import validate

    base = yaml.safe_load((REPO / "config.yaml").read_text())
    preset = yaml.safe_load((REPO / "presets" / "paper.yaml").read_text())
    validate(preset, str(REPO / "workflow" / "schemas" / "config.schema.yaml"))
    merged = {**base, **preset}
    validate(merged, str(REPO / "workflow" / "schemas" / "config.schema.yaml"))
    assert preset["datasets"] == ["digestpath2019", "bcnb", "ubc_ocean"]
    assert "camelyon16" in preset["dataset_config"]
    assert preset["model"]["backbone"] == "efficientnet_b3" and preset["model"]["pretrained"] is True
    assert preset["patch_px"] == preset["model"]["input_px"] == 512 and preset["model"]["dim"] == 512
    assert preset["model"]["n_queries"] == 10 and preset["train"]["bag_size"] == 200
    assert preset["lesion"]["lesion_min"] == 0.7 and preset["lesion"]["encoder"] == "efficientnet-b3"
    assert preset["splits"]["folds"] == 5
    for name, spec in preset["dataset_config"].items():
        assert tuple(spec["classes"]) == DATASETS[name].classes or name == "bcnb"


def _write_preset_config(tmp_path: Path, roots: dict[str, Path]) -> Path:
    preset = yaml.safe_load((REPO / "presets" / "paper.yaml").read_text())
    folders = {"digestpath2019": "DigestPath2019", "bcnb": "BCNB", "ubc_ocean": "UBC-OCEAN",
               "camelyon16": "CAMELYON16"}
    for name, folder in folders.items():
        spec = preset["dataset_config"][name]
        spec["source"] = "local"
        spec["path"] = str(roots[folder])
        for key in ("urls", "competition", "bucket", "files"):
            spec.pop(key, None)
    cfg = tmp_path / "paper_local.yaml"
    cfg.write_text(yaml.safe_dump(preset))
    return cfg


@pytest.mark.slow
def test_paper_preset_dry_run_over_fake_local_copies(tmp_path: Path) -> None:
    """Fetch + list + convert + inspect for real on tiny copies, then a dry run must plan every rule.

    Checkpoints (dataset_table, inspect, slides) hide what follows them until they have run, so the first step
    runs the workflow up to each dataset's slides.tsv; the dry run then has to reach the final tables.
    """
    roots = make_fake_datasets(tmp_path / "data", size=(2048, 1536))
    cfg = _write_preset_config(tmp_path, roots)
    work = tmp_path / "work"
    snakemake = shutil.which("snakemake", path=str(REPO / ".venv" / "bin")) or "snakemake"
    base = [snakemake, "-s", str(REPO / "Snakefile"), "-d", str(work), "--configfile", str(cfg), "--cores", "2"]
    preset = yaml.safe_load(cfg.read_text())
    targets = [f"results/{ds}/slides.tsv" for ds in preset["datasets"]]
    done = subprocess.run(base + targets, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-4000:]
    for ds in preset["datasets"]:
        assert len(pd.read_csv(work / "results" / ds / "slides.tsv", sep="\t")) > 0, ds
    dry = subprocess.run(base + ["-n", "--quiet", "rules"], capture_output=True, text=True, timeout=600)
    assert dry.returncode == 0, dry.stderr[-4000:]
    planned = set(dry.stdout.split()) | set(dry.stderr.split())
    listed = subprocess.run(base + ["--list-rules"], capture_output=True, text=True, timeout=300)
    all_rules = set(listed.stdout.split())
    upstream = {"download_source", "dataset_table", "convert_slide", "convert_annotation", "inspect_slide",
                "inspect", "tissue", "cache", "slides", "generate_synthetic", "synthetic_table"}
    # predict_* rules run only for a `predict:` section (tests/test_workflow_e2e.py covers them)
    missing = sorted(r for r in all_rules - upstream
                     if r not in planned and not r.startswith(("synthetic", "predict")))
    assert not missing, f"rules not planned by the dry run: {missing}\n{dry.stdout[-3000:]}"


def test_geojson_is_valid_shapely(tmp_path: Path) -> None:
    _asap_xml(tmp_path / "t.xml", [("Polygon", "_0", [(0, 0), (10, 10), (10, 0), (0, 10)])])  # bow-tie
    geom = ann.parse_asap_xml(tmp_path / "t.xml")
    assert shapely.is_valid(geom) and geom.area == pytest.approx(50)
