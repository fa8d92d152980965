"""Both workflow profiles plan the workflow: the local default (auto-applied) and SLURM with GPU requests."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
GPU_RULES = {"train", "baseline", "lesion_train", "lesion_infer", "features"}


def _snakemake() -> str:
    found = shutil.which("snakemake", path=str(REPO / ".venv" / "bin")) or shutil.which("snakemake")
    if found is None:
        pytest.skip("snakemake is not installed")
    return found


def _small_config(tmp_path: Path) -> Path:
    """The default config with a smaller synthetic dataset, so running up to the inspect checkpoint is quick."""
    cfg = yaml.safe_load((REPO / "config.yaml").read_text())
    cfg["synthetic"].update(n_slides=10, n_patients=9, width=1024, height=1024)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _job_blocks(output: str) -> list[tuple[str, str]]:
    """(rule name, resources line) for every job a dry run prints."""
    blocks = []
    for match in re.finditer(r"^(?:local)?(?:rule|checkpoint) (\w+):\n(.*?)(?=^\S|\Z)", output, re.M | re.S):
        res = re.search(r"^\s+resources: (.*)$", match.group(2), re.M)
        blocks.append((match.group(1), res.group(1) if res else ""))
    return blocks


def test_profile_files_parse() -> None:
    default = yaml.safe_load((REPO / "profiles" / "default" / "config.yaml").read_text())
    slurm = yaml.safe_load((REPO / "profiles" / "slurm" / "config.yaml").read_text())
    # auto-applied to every run in this checkout (tests included), so it must not require conda
    assert not {"use-conda", "software-deployment-method", "sdm", "executor"} & set(default)
    assert "gpu=1" in default["resources"] and default["keep-going"] and default["rerun-incomplete"]
    assert slurm["executor"] == "slurm"
    assert {"slurm_partition", "slurm_account", "runtime", "mem_mb"} <= set(slurm["default-resources"])
    for rule in GPU_RULES:
        assert slurm["set-resources"][rule]["gpu"] == 1 and "cpus_per_gpu" in slurm["set-resources"][rule]


def test_default_profile_dry_run(tmp_path: Path) -> None:
    done = subprocess.run([_snakemake(), "-s", str(REPO / "Snakefile"), "-d", str(tmp_path / "w"), "-n",
                           "--configfile", str(_small_config(tmp_path))],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "profiles/default" in done.stderr  # picked up without being named


@pytest.mark.slow
def test_slurm_profile_plans_gpu_requests(tmp_path: Path) -> None:
    """Run up to the inspect checkpoint (locally), then the SLURM dry run must plan the GPU rules with GPUs."""
    cfg, work = _small_config(tmp_path), tmp_path / "w"
    base = [_snakemake(), "-s", str(REPO / "Snakefile"), "-d", str(work), "--configfile", str(cfg)]
    done = subprocess.run(base + ["--cores", "2", "--workflow-profile", "none", "results/synthetic/slides.tsv"],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    # conda is not installed here: --sdm on the command line replaces the profile's (CLI wins), so the plan is
    # computed without creating environments; tests/test_envs.py checks the environments statically.
    dry = subprocess.run(base + ["-n", "--workflow-profile", str(REPO / "profiles" / "slurm"),
                                 "--sdm", "env-modules"], capture_output=True, text=True, timeout=600)
    assert dry.returncode == 0, dry.stderr[-3000:]
    jobs = _job_blocks(dry.stdout + dry.stderr)
    planned = {name for name, _ in jobs}
    assert planned >= GPU_RULES, f"GPU rules not planned: {sorted(GPU_RULES - planned)}"
    for name, resources in jobs:
        assert "slurm_account=" in resources, (name, resources)
        if name in GPU_RULES:
            assert re.search(r"\bgpu=1\b", resources) and "slurm_partition=gpu" in resources, (name, resources)
            assert "cpus_per_gpu=" in resources, (name, resources)
        elif name != "all":
            assert "slurm_partition=cpu" in resources, (name, resources)
