"""The workflow as its users and CI see it: `snakemake --lint` clean, snakefmt clean, ruff clean, and every rule
declares what a cluster needs (log, benchmark, conda, threads, resources; gpu on training rules; retries on
downloads), checked on the rules' own definitions rather than by reading the source text."""

from __future__ import annotations

import functools
import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
BIN = REPO / ".venv" / "bin"
#: Rules that must ask for a GPU (CONTRACT: `gpu=1` on training rules).
GPU_RULES = {"train", "baseline", "lesion_train", "lesion_infer"}
DOWNLOAD_RULES = {"download_source"}

_DUMP = textwrap.dedent("""
    import json, sys
    from pathlib import Path
    from snakemake.api import SnakemakeApi
    from snakemake.settings.types import ConfigSettings, OutputSettings, ResourceSettings

    snakefile, workdir, configfiles = Path(sys.argv[1]), Path(sys.argv[2]), [Path(p) for p in sys.argv[3:]]
    with SnakemakeApi(OutputSettings(quiet={"all"})) as api:
        wf = api.workflow(resource_settings=ResourceSettings(), snakefile=snakefile, workdir=workdir,
                          config_settings=ConfigSettings(configfiles=configfiles))._workflow
        out = []
        for rule in wf.rules:
            info = rule.ruleinfo
            resources = dict(info.resources[1]) if info.resources else {}
            out.append({
                "name": rule.name,
                "norun": bool(rule.norun),
                "checkpoint": bool(rule.is_checkpoint),
                "log": [str(p) for p in rule.log],
                "benchmark": str(rule.benchmark) if rule.benchmark else None,
                "conda": str(rule.conda_env) if rule.conda_env else None,
                "script": str(Path(rule.basedir.get_path_or_uri(secret_free=True)) / rule.script) if rule.script else None,
                "shell": bool(rule.shellcmd),
                "run": rule.run_func is not None and not rule.script and not rule.shellcmd and not rule.norun,
                "threads": info.threads is not None,
                "resources": sorted(resources),
                "mem_scales": callable(resources.get("mem_mb")),
                "retries": info.retries or 0,
                "local": rule.name in wf._localrules,
                "snakefile": str(rule.snakefile),
            })
    print("RULES-JSON" + json.dumps(out))
""")


def _tool(name: str) -> str:
    found = shutil.which(name, path=str(BIN)) or shutil.which(name)
    if found is None:
        pytest.skip(f"{name} is not installed")
    return found


@functools.cache
def workflow_rules(configfile: str | None = None) -> list[dict[str, Any]]:
    """Every rule's declared directives, read from the parsed workflow (config.yaml, or `configfile` on top)."""
    import tempfile

    with tempfile.TemporaryDirectory() as work:
        args = [sys.executable, "-c", _DUMP, str(REPO / "Snakefile"), work] + ([configfile] if configfile else [])
        done = subprocess.run(args, capture_output=True, text=True, timeout=300, cwd=work)
    line = next((ln for ln in done.stdout.splitlines() if ln.startswith("RULES-JSON")), None)
    assert line is not None, f"parsing the workflow failed:\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}"
    return json.loads(line.removeprefix("RULES-JSON"))


def _jobs(rules: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rules that run something (not `all`-style target rules)."""
    return [r for r in rules if not r["norun"]]


def test_every_rule_declares_log_benchmark_conda_threads_resources() -> None:
    problems = []
    for rule in _jobs(workflow_rules()):
        missing = [key for key in ("log", "benchmark", "conda", "threads") if not rule[key]]
        missing += [f"resources.{key}" for key in ("mem_mb", "runtime") if key not in rule["resources"]]
        if rule["name"] in GPU_RULES and "gpu" not in rule["resources"]:
            missing.append("resources.gpu")
        if rule["name"] in DOWNLOAD_RULES and rule["retries"] < 1:
            missing.append("retries")
        if rule["run"]:
            missing.append("script/shell (a run: block cannot use conda)")
        if missing:
            problems.append(f"{rule['name']} ({Path(rule['snakefile']).name}): {', '.join(missing)}")
    assert not problems, "rules missing directives:\n" + "\n".join(problems)


def test_memory_grows_with_attempt_where_running_out_is_likely() -> None:
    """Per-slide conversions of images of unknown size: a retry must ask for more memory, not the same."""
    rules = {r["name"]: r for r in workflow_rules()}
    for name in ("convert_slide", "convert_annotation", "dataset_table"):
        assert rules[name]["mem_scales"], f"{name}: mem_mb should be a function of attempt"


def test_gpu_rules_exist() -> None:
    names = {r["name"] for r in workflow_rules()}
    assert names >= GPU_RULES, f"GPU rules not defined yet: {sorted(GPU_RULES - names)}"


def test_conda_envs_exist() -> None:
    for rule in _jobs(workflow_rules()):
        if rule["conda"]:
            env = (Path(rule["snakefile"]).parent / rule["conda"]).resolve()
            assert env.is_file(), f"{rule['name']}: conda env {env} does not exist"


def test_snakemake_lint_clean(tmp_path: Path) -> None:
    # `--lint json` prints the text form too on snakemake 9.x, so the headers of the text form are what we read
    done = subprocess.run([_tool("snakemake"), "-s", str(REPO / "Snakefile"), "-d", str(tmp_path), "--lint"],
                          capture_output=True, text=True, timeout=300)
    output = done.stdout + done.stderr
    found = [ln.strip() for ln in output.splitlines() if ln.startswith("Lints for")]
    titles = [ln.strip() for ln in output.splitlines() if ln.startswith("    * ")]
    assert not found and done.returncode == 0, (
        "snakemake --lint:\n" + "\n".join(found) + "\n" + "\n".join(sorted(set(titles))) + "\n" + output[-1500:])


def test_snakefmt_clean() -> None:
    snakefmt = _tool("snakefmt")
    files = [REPO / "Snakefile", *sorted((REPO / "rules").glob("*.smk"))]
    bad = []
    for path in files:
        done = subprocess.run([snakefmt, "--check", str(path)], capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            bad.append(str(path.relative_to(REPO)))
    assert not bad, "snakefmt --check fails (run `snakefmt Snakefile rules`):\n" + "\n".join(bad)


def test_ruff_clean() -> None:
    targets = [str(REPO / p) for p in ("msamil", "workflow", "tests", "benchmarks") if (REPO / p).exists()]
    done = subprocess.run([_tool("ruff"), "check", "--no-cache", *targets], capture_output=True, text=True,
                          timeout=120, cwd=REPO)
    assert done.returncode == 0, done.stdout[-4000:]
