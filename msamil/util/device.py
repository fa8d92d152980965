"""Which torch device a job runs on, and a loud stop when a job that was given a GPU cannot see one.

The silent failure this prevents: conda envs created on a GPU-less login node get conda-forge's CPU-only pytorch,
and a GPU job then trains on the CPU for days. A job is *meant* for a GPU when the config says `device: cuda`,
when its rule holds a GPU resource (`gpu` >= 1 or a `gres` naming gpu, passed in by the rule script), or when
SLURM allocated GPUs to it (SLURM_JOB_GPUS / SLURM_STEP_GPUS / SLURM_GPUS_ON_NODE, or CUDA_VISIBLE_DEVICES
inside a SLURM job). torch is imported lazily: this module is also imported where torch is absent.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any

from msamil.errors import ConfigError

log = logging.getLogger("msamil.device")

SLURM_GPU_LISTS = ("SLURM_JOB_GPUS", "SLURM_STEP_GPUS")  # GPU indices ("0,1"); SLURM_GPUS_ON_NODE is a count
CUDA_OVERRIDE_HINT = "CONDA_OVERRIDE_CUDA=12.6"


def _listed(value: str | None) -> bool:
    """A device list from the environment that names at least one device ("0" is GPU 0)."""
    return value is not None and value.strip() not in {"", "-1", "NoDevFiles", "none"}


def gpus_requested(resources: Mapping[str, Any] | None = None, env: Mapping[str, str] | None = None) -> str:
    """Why this job holds a GPU ('' when it does not): a rule resource, or SLURM's allocation."""
    env = os.environ if env is None else env
    resources = resources or {}
    try:
        if int(resources.get("gpu", 0) or 0) > 0:
            return f"the rule holds gpu={resources['gpu']}"
    except (TypeError, ValueError):
        pass
    if "gpu" in str(resources.get("gres", "") or ""):
        return f"the rule holds gres={resources['gres']}"
    for var in SLURM_GPU_LISTS:
        if _listed(env.get(var)):
            return f"SLURM allocated GPUs ({var}={env[var]})"
    if env.get("SLURM_GPUS_ON_NODE", "0").strip().isdigit() and int(env.get("SLURM_GPUS_ON_NODE", "0")) > 0:
        return f"SLURM allocated GPUs (SLURM_GPUS_ON_NODE={env['SLURM_GPUS_ON_NODE']})"
    if env.get("SLURM_JOB_ID") and _listed(env.get("CUDA_VISIBLE_DEVICES")):
        return f"SLURM set CUDA_VISIBLE_DEVICES={env['CUDA_VISIBLE_DEVICES']}"
    return ""


def no_cuda_message(why: str) -> str:
    """One line: what was expected, what torch has, and the fix (the likelier one first)."""
    import torch

    envs = (f"recreate the conda envs with {CUDA_OVERRIDE_HINT} set (`{CUDA_OVERRIDE_HINT} snakemake --use-conda "
            "--conda-create-envs-only ...`: on a GPU-less login node conda otherwise installs pytorch's CPU build)")
    partition = "submit GPU jobs to a GPU partition (profiles/README.md) and check the node's driver (nvidia-smi)"
    built = torch.version.cuda
    if built is None:
        have, fixes = f"torch {torch.__version__} is a CPU-only build", (envs, partition)
    else:
        have, fixes = f"torch {torch.__version__} (CUDA {built}) sees no CUDA device", (partition, envs)
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        if visible is not None:
            have += f" (CUDA_VISIBLE_DEVICES={visible!r})"
    return (f"this job is meant to run on a GPU ({why}) but {have}; fix: {fixes[0]}; or {fixes[1]}; "
            "or set device: cpu")


def select_device(preference: str = "auto", resources: Mapping[str, Any] | None = None,
                  env: Mapping[str, str] | None = None) -> Any:
    """auto -> CUDA when present, else CPU (said once in the job log); `cuda`, or a job given a GPU by its rule
    or by SLURM, without a visible CUDA device is a ConfigError naming the fix. `cpu` is always honoured."""
    import torch

    if preference not in {"auto", "cpu", "cuda"}:
        raise ConfigError(f"config device: {preference!r} is not one of auto, cpu, cuda")
    if preference == "cpu":
        return torch.device("cpu")
    if torch.cuda.is_available():
        return torch.device("cuda")
    why = "config device: cuda" if preference == "cuda" else gpus_requested(resources, env)
    if why:
        raise ConfigError(no_cuda_message(why))
    log.info("device: auto and no CUDA device visible: running on CPU (torch %s)", torch.__version__)
    return torch.device("cpu")
