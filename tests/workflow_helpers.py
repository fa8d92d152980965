"""Run the real Snakemake workflow in a temporary working directory, with a test config."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
SNAKEMAKE = str(Path(sys.executable).with_name("snakemake"))


def load_default_config() -> dict[str, Any]:
    return yaml.safe_load((REPO / "config.yaml").read_text())


def deep_update(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_update(out[key], value)
        else:
            out[key] = value
    return out


def write_config(workdir: Path, overrides: dict[str, Any] | None = None,
                 replace: tuple[str, ...] = ("methods",)) -> Path:
    """A complete config file: the default config with `overrides` merged in (top-level keys in `replace` are
    replaced, not merged). Complete, because a config file given to the workflow is its whole config (config.yaml
    is read only without --configfile; README "Configuration")."""
    overrides = overrides or {}
    cfg = deep_update(load_default_config(), {k: v for k, v in overrides.items() if k not in replace})
    cfg.update({k: overrides[k] for k in replace if k in overrides})
    path = Path(workdir) / "test_config.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def snakemake(workdir: Path, config: Path, *args: str, timeout: int = 1500,
              check: bool = False) -> subprocess.CompletedProcess[str]:
    """`snakemake -s <repo>/Snakefile -d workdir --configfile config ...`, output captured."""
    cmd = [SNAKEMAKE, "-s", str(REPO / "Snakefile"), "-d", str(workdir), "--configfile", str(config),
           "--workflow-profile", "none", *args]
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    if check and proc.returncode != 0:
        raise AssertionError(f"snakemake failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-8000:]}")
    return proc
