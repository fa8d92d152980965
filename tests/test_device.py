"""A job meant for a GPU that finds none fails at once with the fix; `device: auto` on CPU says so in the log."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
import yaml
from test_lint import workflow_rules

from msamil.errors import ConfigError
from msamil.training.trainer import run_training
from msamil.util.device import gpus_requested, select_device

REPO = Path(__file__).resolve().parents[1]
no_gpu = pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA device")


def _one_line_fix(err: ConfigError) -> str:
    msg = str(err)
    assert "\n" not in msg
    assert "CONDA_OVERRIDE_CUDA" in msg and "GPU partition" in msg and "device: cpu" in msg
    return msg


@no_gpu
def test_cuda_on_a_cpu_machine_fails_in_one_clear_line_through_run_training(tmp_path: Path) -> None:
    """The trainer the `train` rule calls stops before reading any input (the paths do not even exist)."""
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    config["device"] = "cuda"
    with pytest.raises(ConfigError) as err:
        run_training(config, "synthetic", "msamil", 0, slides_tsv=tmp_path / "missing.tsv",
                     folds_tsv=tmp_path / "missing.tsv", caches=[], selection=tmp_path / "sel.h5",
                     out_dir=tmp_path / "run", progress=False)
    assert "config device: cuda" in _one_line_fix(err.value)
    assert not (tmp_path / "run").exists()


@no_gpu
@pytest.mark.parametrize(("resources", "env", "why"), [
    ({"gpu": 1}, {}, "gpu=1"),
    ({"gres": "gpu:a100:1"}, {}, "gres=gpu:a100:1"),
    ({}, {"SLURM_JOB_GPUS": "0"}, "SLURM_JOB_GPUS"),
    ({}, {"SLURM_GPUS_ON_NODE": "2"}, "SLURM_GPUS_ON_NODE"),
    ({}, {"SLURM_JOB_ID": "42", "CUDA_VISIBLE_DEVICES": "0"}, "CUDA_VISIBLE_DEVICES"),
])
def test_auto_with_a_gpu_given_by_the_profile_fails(resources: dict, env: dict, why: str) -> None:
    with pytest.raises(ConfigError) as err:
        select_device("auto", resources, env)
    assert why in _one_line_fix(err.value)


@no_gpu
def test_auto_on_cpu_says_so_once(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="msamil"):
        assert select_device("auto", {"gpu": 0, "mem_mb": 1000}, {"CUDA_VISIBLE_DEVICES": ""}).type == "cpu"
    lines = [r.getMessage() for r in caplog.records if "running on CPU" in r.getMessage()]
    assert len(lines) == 1


def test_cpu_is_always_honoured_and_bad_values_are_named() -> None:
    assert select_device("cpu", {"gpu": 1}, {"SLURM_JOB_GPUS": "0"}).type == "cpu"
    with pytest.raises(ConfigError, match="'gpu0'"):
        select_device("gpu0")


def test_gpu_hints_without_a_gpu() -> None:
    assert gpus_requested({"gpu": 0}, {"CUDA_VISIBLE_DEVICES": "0"}) == ""  # outside SLURM: a user's shell
    assert gpus_requested({}, {"SLURM_JOB_ID": "1", "CUDA_VISIBLE_DEVICES": "-1"}) == ""
    assert gpus_requested({}, {"SLURM_GPUS_ON_NODE": "0"}) == ""


def test_every_gpu_rule_script_hands_its_resources_to_msamil() -> None:
    """Otherwise a job holding a GPU could not know it and would fall back to the CPU silently."""
    checked = []
    for rule in workflow_rules():
        if "gpu" not in rule["resources"] or not rule["script"]:
            continue
        assert "resources=dict(snakemake.resources.items())" in Path(rule["script"]).read_text(), rule["name"]
        checked.append(rule["name"])
    assert {"train", "baseline", "lesion_train", "lesion_infer"} <= set(checked)
