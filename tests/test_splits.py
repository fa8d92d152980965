"""Cross-validation splits: patient grouping, one test fold per slide, stratification, reproducibility."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from msamil.errors import ConfigError
from msamil.splits.folds import make_folds, run_splits


def slide_table(seed: int, n_slides: int = 30, n_patients: int = 26, classes=("benign", "malignant")
                ) -> pd.DataFrame:
    """Patients with one label each; the first n_patients slides one per patient, the rest to random patients."""
    rng = np.random.default_rng(seed)
    labels = {f"p{i:03d}": str(rng.choice(classes)) for i in range(n_patients)}
    rows = []
    for i in range(n_slides):
        patient = f"p{i:03d}" if i < n_patients else f"p{int(rng.integers(n_patients)):03d}"
        rows.append((f"s{i:03d}", patient, labels[patient]))
    return pd.DataFrame(rows, columns=["slide", "patient", "label"])


CASES = [(30, 26, ("benign", "malignant")), (64, 40, ("a", "b", "c")), (120, 90, ("a", "b", "c", "d"))]


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("case", CASES)
def test_fold_properties(seed: int, case) -> None:
    n_slides, n_patients, classes = case
    slides = slide_table(seed, n_slides, n_patients, classes)
    folds = make_folds(slides, 5, 0.2, seed)
    assert list(folds.columns) == ["fold", "slide", "patient", "label", "split"]
    assert set(folds["split"]) <= {"train", "val", "test"}
    # every slide appears once per fold and in exactly one test fold
    assert (folds.groupby("slide")["fold"].nunique() == 5).all()
    test = folds[folds["split"] == "test"]
    assert sorted(test["slide"]) == sorted(slides["slide"])
    totals = slides["label"].value_counts()
    for _, part in folds.groupby("fold"):
        assert len(part) == len(slides)
        # no patient in two of the fold's sets
        assert (part.groupby("patient")["split"].nunique() == 1).all()
        # test-fold label counts within one slide of perfect stratification
        counts = part[part["split"] == "test"]["label"].value_counts().reindex(totals.index, fill_value=0)
        assert ((counts - totals / 5).abs() <= 1.0).all(), counts
        # validation holds every class that has slides to spare
        rest = part[part["split"] != "test"]
        val = part[part["split"] == "val"]
        for cls, n in rest["label"].value_counts().items():
            if n >= 2:
                assert (val["label"] == cls).any(), cls
        assert (part["split"] == "train").sum() > len(val)


def test_seeded_reproducible_and_seed_dependent() -> None:
    slides = slide_table(3, 40, 30)
    a = make_folds(slides, 5, 0.2, seed=7)
    b = make_folds(slides.sample(frac=1.0, random_state=1), 5, 0.2, seed=7)
    pd.testing.assert_frame_equal(a, b)
    c = make_folds(slides, 5, 0.2, seed=8)
    assert not a.equals(c)


def test_too_few_patients_is_a_config_error() -> None:
    slides = slide_table(0, 4, 3)
    with pytest.raises(ConfigError, match="folds"):
        make_folds(slides, 5, 0.2, 0)


def test_run_splits_writes_table(tmp_path) -> None:
    slides = slide_table(1)
    slides["label_idx"] = (slides["label"] == "malignant").astype(int)
    src = tmp_path / "slides.tsv"
    slides.to_csv(src, sep="\t", index=False)
    out = tmp_path / "splits" / "folds.tsv"
    run_splits(str(src), str(out), 3, 0.25, 0)
    table = pd.read_csv(out, sep="\t", dtype={"slide": str})
    assert len(table) == 3 * len(slides)
    assert set(table["fold"]) == {0, 1, 2}
