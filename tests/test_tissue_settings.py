"""Tissue settings per dataset (`dataset_config.<ds>.tissue`) and MPP options that may be null: schema and lookup."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import yaml
from snakemake.utils import validate

from msamil.errors import ConfigError
from msamil.tissue.detect import TISSUE_DEFAULTS, tissue_mask
from msamil.tissue.settings import merge_tissue, tissue_settings

REPO = Path(__file__).resolve().parents[1]
SCHEMA = str(REPO / "workflow" / "schemas" / "config.schema.yaml")


@pytest.fixture
def config() -> dict:
    return yaml.safe_load((REPO / "config.yaml").read_text())


def test_dataset_overrides_win_key_by_key(config):
    config["tissue"]["threshold"] = 0.02
    config["dataset_config"]["synthetic"]["tissue"] = {"threshold": 0.005, "fragment_area_ratio": 0.001}
    merged = tissue_settings(config, "synthetic")
    assert merged["threshold"] == 0.005 and merged["fragment_area_ratio"] == 0.001
    assert merged["seed_threshold"] == config["tissue"]["seed_threshold"]  # not overridden: the global value
    assert set(merged) == set(TISSUE_DEFAULTS)
    assert tissue_settings(config, "no_such_dataset")["threshold"] == 0.02


def test_defaults_fill_what_config_leaves_out():
    assert merge_tissue(None, {"seg_mpp": 4.0}) == {**TISSUE_DEFAULTS, "seg_mpp": 4.0}


def test_unknown_tissue_key_is_a_config_error():
    with pytest.raises(ConfigError, match="treshold"):
        merge_tissue({"treshold": 0.1}, where="dataset_config.x.tissue")


def test_schema_accepts_dataset_tissue_and_null_mpps(config):
    config["dataset_config"]["synthetic"]["tissue"] = {"threshold": 0.005, "min_fragment_area_um2": 2000}
    config["dataset_config"]["ubc"] = {"source": "local", "classes": ["a", "b"], "default_mpp": None,
                                       "options": {"wsi_mpp": None, "tma_mpp": None}}
    validate(copy.deepcopy(config), SCHEMA)


@pytest.mark.parametrize("tissue", [{"threshold": "low"}, {"treshold": 0.01}, {"threshold": 0},
                                    {"edge_fraction": 2}])
def test_schema_rejects_bad_dataset_tissue(config, tissue):
    config["dataset_config"]["synthetic"]["tissue"] = tissue
    with pytest.raises(Exception, match="tissue|threshold|edge_fraction"):
        validate(config, SCHEMA)


def test_a_dataset_override_admits_what_the_global_settings_miss():
    """One faint IHC cohort among H&E ones: its own threshold finds the faint fragment the global one rejects."""
    img = np.full((120, 160, 3), 242, np.uint8)
    img[40:80, 50:110] = (228, 230, 238)  # very light hematoxylin: stain OD ~0.01-0.02
    strict = merge_tissue({"threshold": 0.03, "seed_threshold": 0.05})
    faint = merge_tissue({"threshold": 0.03, "seed_threshold": 0.05}, {"threshold": 0.004, "seed_threshold": 0.008})
    for cfg in (strict, faint):
        cfg.pop("seg_mpp")
    assert not tissue_mask(img, 8.0, **strict).any()
    assert tissue_mask(img, 8.0, **faint)[45:75, 55:105].all()
