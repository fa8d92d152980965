"""SFFM selection on hand-made probability maps and cache coordinates."""

from __future__ import annotations

import h5py
import numpy as np
import pandas as pd
import pytest

from msamil.errors import SlideError
from msamil.lesion.sffm import footprint_fractions, load_selection, run_sffm, select_patches

MAP_MPP = 8.0
SLIDE_MPP = 0.5  # 16 level-0 px per map pixel
F20 = 64  # level-0 footprint of a 20x patch = 4 map pixels


def grid(n_cols: int, n_rows: int, size: int) -> np.ndarray:
    return np.array([(i * size, j * size) for j in range(n_rows) for i in range(n_cols)], dtype=np.int64)


def write_cache(path, slide: str) -> dict[str, np.ndarray]:
    """A minimal cache: every scale tiles a 16x16-map-pixel (256 level-0 px) area completely."""
    coords = {"20x": grid(4, 4, F20), "10x": grid(2, 2, 2 * F20), "5x": grid(1, 1, 4 * F20)}
    with h5py.File(path, "w") as h5:
        h5.attrs.update({"slide": slide, "mpp": SLIDE_MPP, "complete": True})
        for scale, c in coords.items():
            g = h5.create_group(scale)
            g.create_dataset("coords", data=c)
            g.create_dataset("tissue_frac", data=np.linspace(0.5, 1.0, len(c)).astype(np.float32))
            g.attrs["patch_size_level0"] = F20 * {"20x": 1, "10x": 2, "5x": 4}[scale]
    return coords


def lesion_map() -> np.ndarray:
    """16x16 uint8 map: lesion (prob 0.9) on rows 0..7, cols 0..5, a sub-threshold 0.4 elsewhere.

    20x cells are 4x4 map pixels: the two of grid column 0 in grid rows 0 and 1 are full, those of grid column 1
    half covered.
    """
    prob = np.full((16, 16), 0.4)
    prob[0:8, 0:6] = 0.9
    return np.round(prob * 255).astype(np.uint8)


def test_footprint_fractions_exact() -> None:
    mask = lesion_map() >= 128
    frac = footprint_fractions(mask, grid(4, 4, F20), F20, SLIDE_MPP / MAP_MPP)
    expected = np.zeros((4, 4))
    expected[0:2, 0] = 1.0
    expected[0:2, 1] = 0.5
    np.testing.assert_allclose(frac.reshape(4, 4), expected)
    # a footprint straddling pixels and the map edge: fractional coverage, outside counts as non-lesion
    off = footprint_fractions(mask, np.array([[8, 8], [-32, -32]]), F20, SLIDE_MPP / MAP_MPP)
    np.testing.assert_allclose(off, [1.0, 0.25], atol=1e-6)


def test_select_patches_threshold_and_fallback() -> None:
    kept, fb = select_patches(np.array([0.1, 0.71, 0.7, 0.95]), 0.7, 2)
    assert kept.tolist() == [1, 3] and not fb  # strictly greater than lesion_min
    kept, fb = select_patches(np.array([0.1, 0.5, 0.0, 0.3]), 0.7, 2)
    assert kept.tolist() == [1, 3] and fb
    kept, fb = select_patches(np.zeros(5), 0.7, 3, tiebreak=np.array([0.2, 0.9, 0.5, 0.9, 0.1]))
    assert kept.tolist() == [1, 2, 3] and fb  # empty map: most tissue first, then lower index
    kept, fb = select_patches(np.zeros(0), 0.7, 3)
    assert len(kept) == 0 and not fb


def test_run_sffm_kept_sets_fallback_and_summary(tmp_path) -> None:
    caches = []
    for slide in ("a", "b"):
        write_cache(tmp_path / f"{slide}.h5", slide)
        caches.append(str(tmp_path / f"{slide}.h5"))
    with h5py.File(tmp_path / "probmaps.h5", "w") as h5:
        h5.create_dataset("a", data=lesion_map()).attrs["mpp"] = MAP_MPP
        h5.create_dataset("b", data=np.zeros((16, 16), np.uint8)).attrs["mpp"] = MAP_MPP  # empty map
        h5.attrs["complete"] = True
    summary = run_sffm(tmp_path / "probmaps.h5", caches, tmp_path / "sel.h5", tmp_path / "summary.tsv",
                       prob_threshold=0.5, lesion_min=0.7, fallback_k=2)

    sel_a = load_selection(tmp_path / "sel.h5", "a")
    assert sel_a["20x"].tolist() == [0, 4]  # 20x cells (col 0, rows 0 and 1), row-major indices
    # 10x cells are 8x8 map px: cell (0,0) holds 8x6 lesion = 0.75 > 0.7
    assert sel_a["10x"].tolist() == [0]
    with h5py.File(tmp_path / "sel.h5", "r") as h5:
        assert h5.attrs["complete"]
        assert not h5["a/20x"].attrs["fallback"] and not h5["a/10x"].attrs["fallback"]
        # 5x: one cell, 48/256 lesion -> fallback keeps it, flagged
        assert h5["a/5x"].attrs["fallback"] and h5["a/5x/kept"][:].tolist() == [0]
        assert h5["a/20x/lesion_frac"].dtype == np.float32 and h5["a/20x/lesion_frac"].shape == (16,)
        for scale in ("20x", "10x", "5x"):
            assert h5[f"b/{scale}"].attrs["fallback"]
        # empty map: the two most tissue-filled patches (tissue_frac increases with the index)
        assert h5["b/20x/kept"][:].tolist() == [14, 15]

    written = pd.read_csv(tmp_path / "summary.tsv", sep="\t", dtype={"slide": str})
    assert list(written.columns[:5]) == ["slide", "scale", "tissue_patches", "kept", "fallback"]
    assert len(written) == len(summary) == 6
    row = written[(written["slide"] == "a") & (written["scale"] == "20x")].iloc[0]
    assert row["tissue_patches"] == 16 and row["kept"] == 2 and not row["fallback"]
    assert written[written["slide"] == "b"]["fallback"].all()


def test_missing_probmap_and_unknown_slide(tmp_path) -> None:
    write_cache(tmp_path / "c.h5", "c")
    with h5py.File(tmp_path / "probmaps.h5", "w") as h5:
        h5.attrs["complete"] = True
    with pytest.raises(SlideError, match="'c'"):
        run_sffm(tmp_path / "probmaps.h5", [str(tmp_path / "c.h5")], tmp_path / "s.h5", tmp_path / "s.tsv",
                 prob_threshold=0.5, lesion_min=0.7, fallback_k=2)
    assert not (tmp_path / "s.h5").exists()
