"""The `msamil` command answers the questions users ask of a slide or a cache without running the workflow."""

from __future__ import annotations

import json

import numpy as np
import pytest
from slide_fixtures import tissue_image, write_aperio, write_not_a_slide

from msamil.cli import main


def test_slide_info_reports_mpp_and_levels(tmp_path, capsys):
    path = write_aperio(tmp_path / "a.svs", tissue_image(600, 400, 0.5))
    assert main(["slide-info", str(path)]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["mpp"] == pytest.approx(0.5)
    assert record["vendor"] == "aperio"
    assert record["levels"] >= 1


def test_slide_info_on_a_bad_file_says_why_and_fails(tmp_path, capsys):
    path = write_not_a_slide(tmp_path / "bad.svs")
    assert main(["slide-info", str(path)]) == 1
    record = json.loads(capsys.readouterr().out)
    assert record["error"]


def test_help_lists_the_commands(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "slide-info" in out and "cache-info" in out


def test_cache_info_counts_patches(tmp_path, capsys):
    import h5py

    path = tmp_path / "c.h5"
    with h5py.File(path, "w") as h5:
        h5.attrs["slide"] = "s1"
        h5.attrs["complete"] = True
        h5.create_group("20x").create_dataset("coords", data=np.zeros((7, 2), dtype=np.int64))
    assert main(["cache-info", str(path)]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["n_20x"] == 7 and record["slide"] == "s1"
