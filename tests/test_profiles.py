"""Both workflow profiles plan the workflow: the local default (auto-applied) and SLURM with GPU requests."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.version import Version

from msamil.config import cached_weights

REPO = Path(__file__).resolve().parents[1]
GPU_RULES = {"train", "baseline", "lesion_train", "lesion_infer"}


def _snakemake() -> str:
    found = shutil.which("snakemake", path=str(REPO / ".venv" / "bin")) or shutil.which("snakemake")
    if found is None:
        pytest.skip("snakemake is not installed")
    return found


def _small_config(tmp_path: Path, **model: object) -> Path:
    """The default config with a smaller synthetic dataset, so running up to the inspect checkpoint is quick."""
    cfg = yaml.safe_load((REPO / "config.yaml").read_text())
    cfg["synthetic"].update(n_slides=10, n_patients=9, width=1024, height=1024)
    cfg["model"].update(model)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _job_blocks(output: str) -> list[tuple[str, str, str]]:
    """(rule name, resources line, whole block) for every job a dry run prints."""
    blocks = []
    for match in re.finditer(r"^(?:local)?(?:rule|checkpoint) (\w+):\n(.*?)(?=^\S|\Z)", output, re.M | re.S):
        res = re.search(r"^\s+resources: (.*)$", match.group(2), re.M)
        blocks.append((match.group(1), res.group(1) if res else "", match.group(2)))
    return blocks


def test_profile_files_parse() -> None:
    default = yaml.safe_load((REPO / "profiles" / "default" / "config.yaml").read_text())
    slurm = yaml.safe_load((REPO / "profiles" / "slurm" / "config.yaml").read_text())
    # auto-applied to every run in this checkout (tests included), so it must not require conda
    assert not {"use-conda", "software-deployment-method", "sdm", "executor"} & set(default)
    assert "gpu=1" in default["resources"] and default["keep-going"] and default["rerun-incomplete"]
    assert slurm["executor"] == "slurm"
    assert set(slurm["default-resources"]) == {"runtime", "mem_mb"}
    # no placeholder account/partition anywhere: the profile must submit as it is (profiles/README.md says how
    # to name them, or to route GPU jobs through the plugin's partition file)
    text = (REPO / "profiles" / "slurm" / "config.yaml").read_text()
    settings = "\n".join(line.split("#")[0] for line in text.splitlines())
    assert "slurm_account" not in settings and "slurm_partition" not in settings
    for rule in GPU_RULES:
        res = slurm["set-resources"][rule]
        assert res["gpu"] == 1 and not {"slurm_partition", "slurm_account"} & set(res)
        # the job's threads size its loader workers; SLURM books the same number of cores
        assert slurm["set-threads"][rule] == res["cpus_per_gpu"] >= 4, rule
    assert slurm["set-threads"]["train"] >= 8


def test_slurm_plugin_pinned_where_job_arrays_exist() -> None:
    """slurm-array-jobs needs snakemake-executor-plugin-slurm >= 2.6; an older plugin aborts on the key."""
    import tomllib

    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    plugin = next(Requirement(d) for d in deps if Requirement(d).name == "snakemake-executor-plugin-slurm")
    assert Version("2.6.0") in plugin.specifier and Version("2.5.4") not in plugin.specifier
    doc = (REPO / "profiles" / "README.md").read_text()
    assert "slurm-partition-config" in doc and "slurm_account" in doc and "CONDA_OVERRIDE_CUDA" in doc


def test_default_profile_dry_run(tmp_path: Path) -> None:
    done = subprocess.run([_snakemake(), "-s", str(REPO / "Snakefile"), "-d", str(tmp_path / "w"), "-n",
                           "--configfile", str(_small_config(tmp_path))],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "profiles/default" in done.stderr  # picked up without being named


@pytest.mark.slow
def test_slurm_profile_plans_gpu_requests(tmp_path: Path) -> None:
    """Run up to the inspect checkpoint (locally), then the SLURM dry run must plan the GPU rules with GPUs and
    their threads, no placeholder account or partition, and the pretrained weights fetched by a local rule."""
    cfg, work = _small_config(tmp_path, pretrained=True, weights_cache="weights"), tmp_path / "w"
    base = [_snakemake(), "-s", str(REPO / "Snakefile"), "-d", str(work), "--configfile", str(cfg)]
    done = subprocess.run(base + ["--cores", "2", "--workflow-profile", "none", "results/synthetic/slides.tsv"],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    # conda is not installed here: --sdm on the command line replaces the profile's (CLI wins), so the plan is
    # computed without creating environments; tests/test_envs.py checks the environments statically.
    # (--cores: a dry run plans on the local dry-run executor, which caps threads at the cores it is given; the
    # SLURM executor does not)
    dry = subprocess.run(base + ["-n", "--workflow-profile", str(REPO / "profiles" / "slurm"),
                                 "--sdm", "env-modules", "--cores", "16"], capture_output=True, text=True, timeout=600)
    assert dry.returncode == 0, dry.stderr[-3000:]
    out = dry.stdout + dry.stderr
    jobs = _job_blocks(out)
    # the cache file is named by the backbone and a hash of its backbone_kwargs (the demo sets output_stride)
    weights = cached_weights(yaml.safe_load(cfg.read_text())["model"]).name
    planned = {name for name, _, _ in jobs}
    assert planned >= GPU_RULES | {"fetch_weights"}, f"not planned: {sorted(GPU_RULES - planned)}"
    for name, resources, block in jobs:
        assert "slurm_account=" not in resources and "slurm_partition=" not in resources, (name, resources)
        if name in GPU_RULES:
            assert re.search(r"\bgpu=1\b", resources) and "cpus_per_gpu=" in resources, (name, resources)
            assert re.search(r"^\s+threads: [48]$", block, re.M), (name, block)
        if name in {"train", "baseline"}:
            assert f"weights/{weights}" in block, block
    assert sum(name == "fetch_weights" for name, _, _ in jobs) == 1
