"""A wrong config fails at start-up, before any job runs, and the message names the offending key."""

from __future__ import annotations

import pytest

from tests.workflow_helpers import snakemake, write_config


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"synthetic": {"n_slides": "many"}}, "n_slides"),
        ({"synthetic": {"width": -4096}}, "width"),
        ({"patch_px": -64}, "patch_px"),
        ({"datasets": ["tcga-brca!"]}, "datasets"),
        ({"datasets": ["predict"]}, "datasets"),
        ({"tissue": {"treshold": 20}}, "treshold"),
        ({"methods": {"msamil": {"kind": "transmil"}}}, "kind"),
        ({"splits": {"folds": 1}}, "folds"),
    ],
    ids=["wrong-type", "negative-size", "negative-patch", "bad-dataset-name", "reserved-dataset-name", "unknown-key",
         "unknown-kind", "one-fold"],
)
def test_bad_config_fails_before_any_job_naming_the_key(tmp_path, overrides, expected):
    config = write_config(tmp_path, overrides)
    proc = snakemake(tmp_path, config, "-n", "--cores", "1")
    assert proc.returncode != 0
    output = proc.stdout + proc.stderr
    assert "Error validating config" in output
    assert expected in output
    assert not (tmp_path / "results").exists()


def test_dataset_without_definition_is_named(tmp_path):
    config = write_config(tmp_path, {"datasets": ["bcnb"], "dataset_config": {}})
    proc = snakemake(tmp_path, config, "-n", "--cores", "1")
    assert proc.returncode != 0
    assert "'bcnb'" in proc.stdout + proc.stderr
    assert "dataset_config" in proc.stdout + proc.stderr


def test_own_dataset_needs_a_slide_table(tmp_path):
    config = write_config(tmp_path, {"datasets": ["tcga_brca"],
                                     "dataset_config": {"tcga_brca": {"source": "url", "classes": ["a", "b"]}}})
    proc = snakemake(tmp_path, config, "-n", "--cores", "1")
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "dataset_config.tcga_brca" in out
    assert "source: local" in out and "slide_table" in out
    assert not (tmp_path / "results").exists()


@pytest.mark.parametrize(
    ("predict", "expected"),
    [
        ({"dataset": "tcga", "method": "msamil"}, ["predict.new.dataset", "'tcga'", "dataset_config"]),
        ({"dataset": "synthetic", "method": "transmil"}, ["predict.new.method", "'transmil'", "known"]),
        ({"dataset": "synthetic", "method": "abmil"}, ["predict.new.method", "kind 'abmil'", "msamil"]),
    ],
    ids=["unknown-dataset", "unknown-method", "baseline-method"],
)
def test_predict_set_must_name_a_trained_dataset_and_msamil_method(tmp_path, predict, expected):
    config = write_config(tmp_path, {"predict": {"new": {"slide_table": "new.tsv", **predict}}})
    proc = snakemake(tmp_path, config, "-n", "--cores", "1")
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    for text in expected:
        assert text in out, out[-2000:]
    assert not (tmp_path / "results").exists()


def test_predict_set_schema_names_the_key(tmp_path):
    config = write_config(tmp_path, {"predict": {"new": {"slide_table": "new.tsv", "dataset": "synthetic"}}})
    proc = snakemake(tmp_path, config, "-n", "--cores", "1")
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "Error validating config" in out and "'method' is a required property" in out
