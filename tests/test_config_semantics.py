"""Configs mean what they say (README "Configuration"): a given config file is the whole config, the paper preset is
complete and resolves to itself whatever config.yaml holds, a user config gets exactly its methods, and both the
demo and the preset run the paper's architecture (MSFEM's token Transformer over >= 2x2 tokens, low-rank MHE)."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from msamil.models.msfem import MSFEM
from tests.workflow_helpers import SNAKEMAKE, load_default_config, write_config

REPO = Path(__file__).resolve().parents[1]
PRESET = REPO / "presets" / "paper.yaml"
CONFIGS = {"demo": REPO / "config.yaml", "paper": PRESET}


def leaves(tree: Any, prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], Any]:
    """{key path: value} of every leaf of a nested mapping (an empty mapping is a leaf)."""
    if isinstance(tree, dict) and tree:
        out: dict[tuple[str, ...], Any] = {}
        for key, value in tree.items():
            out.update(leaves(value, (*prefix, key)))
        return out
    return {prefix: tree}


def resolve(workflow: Path, workdir: Path, *args: str) -> tuple[dict[str, Any], str]:
    """Dry-run the workflow in `workflow` (a Snakefile directory) and return (the config every rule sees, the
    planned jobs): MSAMIL_DUMP_CONFIG is the Snakefile's hook for the first, the dry-run listing the second."""
    dump = workdir / "resolved.json"
    env = {**os.environ, "MSAMIL_DUMP_CONFIG": str(dump), "PYTHONHASHSEED": "0"}
    import subprocess

    proc = subprocess.run([SNAKEMAKE, "-s", str(workflow / "Snakefile"), "-d", str(workdir), "-n", "--cores", "1",
                           "--workflow-profile", "none", *args], capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    plan = re.sub(r"\[\w{3} \w{3} +\d+ [\d:]+ \d{4}\]", "", proc.stdout + proc.stderr)  # timestamps
    banner = ("Date:", "Workflow ID:", "Platform:", "Host:", "User:", "Snakemake version:", "Python version:",
              "Command:", "Snakefile:", "Base directory:", "Run directory:", "Working directory:", "Config file",
              "Config MD5", "Building DAG", "Complete log")
    lines = [ln for ln in plan.replace(str(workflow), "<workflow>").replace(str(workdir), "<workdir>").splitlines()
             if not ln.strip().startswith((*banner, "jobid:"))]
    blocks = sorted("\n".join(lines).split("\n\n"))  # jobs as a set: the listing order is not fixed
    return json.loads(dump.read_text()), "\n\n".join(blocks)


def workflow_copy(dest: Path) -> Path:
    """The workflow's files in `dest` (the package linked), so its config.yaml can be edited."""
    dest.mkdir(parents=True)
    for name in ("Snakefile", "config.yaml"):
        shutil.copy2(REPO / name, dest / name)
    for name in ("rules", "workflow", "envs", "presets"):
        shutil.copytree(REPO / name, dest / name)
    (dest / "msamil").symlink_to(REPO / "msamil")
    return dest


# ---------------------------------------------------------------------------------------------------- presets
def test_paper_preset_is_complete():
    """Every key the demo config sets is set by the preset too (the dataset-specific sections aside)."""
    demo, preset = leaves(load_default_config()), leaves(yaml.safe_load(PRESET.read_text()))
    shared = {k for k in demo if k[0] not in ("synthetic", "dataset_config")}
    missing = sorted(k for k in shared if k not in preset and not any(k[:i] in preset for i in range(1, len(k))))
    assert not missing, missing


def test_synthetic_benchmark_preset_is_the_demo_at_size():
    """presets/synthetic_benchmark.yaml differs from the demo only in what its header says: slide and patient
    counts, and the methods (a subset: the claims' methods, defined exactly as in the demo)."""
    demo = load_default_config()
    bench = yaml.safe_load((REPO / "presets" / "synthetic_benchmark.yaml").read_text())
    assert bench["methods"] and all(bench["methods"][m] == demo["methods"][m] for m in bench["methods"])
    assert {"msamil", "msamil_20x_only", "msamil_10x_only", "msamil_5x_only"} <= set(bench["methods"])
    differ = {k for k in leaves(demo) | leaves(bench) if leaves(demo).get(k) != leaves(bench).get(k)}
    allowed = {("synthetic", "n_slides"), ("synthetic", "n_patients")}
    assert {k for k in differ if k[0] != "methods"} == allowed
    assert bench["synthetic"]["n_slides"] >= 250


def test_every_preset_value_the_paper_does_not_give_is_marked():
    """Lines of the sections where the paper gives only a few values carry 'not in the paper' or a source."""
    text = PRESET.read_text()
    for key in ("token_layers", "token_heads", "mhe_layers", "mhe_heads", "mhe_rank", "epochs: 50",
                "bn_calib_patches", "infer_bags", "match_views", "torch_threads"):
        line = next(ln for ln in text.splitlines() if ln.strip().startswith(key))
        assert "not in the paper" in line or "paper's" in line or "match_views" in key, line
    assert "every value here is \"not in the paper\"" in text  # the baselines' section header


@pytest.mark.slow
def test_paper_preset_resolves_to_itself_whatever_config_yaml_holds(tmp_path):
    """`--configfile presets/paper.yaml` plans the same jobs with the same config after any edit of config.yaml;
    and that config is the preset's own values (plus the schema's defaults), none from the demo."""
    resolved, plan = resolve(REPO, tmp_path / "a", "--configfile", str(PRESET))
    edited = workflow_copy(tmp_path / "edited")
    demo = load_default_config()
    demo.update(seed=7, device="cpu", torch_threads=3, patch_px=96)
    demo["train"].update(bn_calib_patches=64, epochs=3)
    demo["model"].update(dim=32, token_layers=0)
    demo["baselines"]["dino"]["patches_per_epoch"] = 256
    demo["methods"] = {"msamil": {"kind": "msamil"}}
    (edited / "config.yaml").write_text(yaml.safe_dump(demo))
    resolved_e, plan_e = resolve(edited, tmp_path / "b", "--configfile", str(edited / "presets" / "paper.yaml"))
    assert resolved_e == resolved
    assert plan_e == plan and "rule download_source" in plan
    preset = leaves(yaml.safe_load(PRESET.read_text()))
    got = leaves(resolved)
    assert {k: got.get(k) for k in preset} == preset
    assert set(got) == set(preset)  # nothing added: not even a schema default (the preset sets those too)
    # the demo default, given no config file, is config.yaml itself
    resolved_d, _ = resolve(edited, tmp_path / "c")
    assert resolved_d["seed"] == 7 and set(resolved_d["methods"]) == {"msamil"}


@pytest.mark.slow
def test_a_user_config_gets_exactly_its_methods(tmp_path):
    full = write_config(tmp_path, {"methods": {"msamil": {"kind": "msamil"}, "abmil": {"kind": "abmil"}}})
    only = tmp_path / "only.yaml"
    only.write_text(yaml.safe_dump({"methods": {"dino_abmil": {"kind": "dino_abmil"}}, "seed": 3}))
    resolved, _ = resolve(REPO, tmp_path / "a", "--configfile", str(full))
    assert set(resolved["methods"]) == {"msamil", "abmil"}  # not the nine of config.yaml
    resolved, _ = resolve(REPO, tmp_path / "b", "--configfile", str(full), str(only))
    assert set(resolved["methods"]) == {"dino_abmil"} and resolved["seed"] == 3  # later file: methods exactly
    resolved, _ = resolve(REPO, tmp_path / "c", "--config", "methods={icmil_abmil: {kind: icmil_abmil}}")
    assert set(resolved["methods"]) == {"icmil_abmil"}  # --config on the demo: exactly that method too
    assert resolved["synthetic"] == load_default_config()["synthetic"]


def test_a_partial_config_file_fails_naming_the_missing_section(tmp_path):
    cfg = load_default_config()
    del cfg["train"]
    path = tmp_path / "partial.yaml"
    path.write_text(yaml.safe_dump(cfg))
    import subprocess

    proc = subprocess.run([SNAKEMAKE, "-s", str(REPO / "Snakefile"), "-d", str(tmp_path), "-n", "--workflow-profile",
                           "none", "--configfile", str(path)], capture_output=True, text=True, timeout=600)
    assert proc.returncode != 0
    assert "'train' is a required property" in proc.stdout + proc.stderr


# ------------------------------------------------------------------------------------------------ architecture
@pytest.mark.parametrize("name", list(CONFIGS))
def test_config_runs_the_papers_architecture(name):
    """MSFEM's token Transformer runs (>= 1 layer) over >= 2x2 tokens, and MHE is low rank (heads x rank <= d/2)."""
    model_cfg = dict(yaml.safe_load(CONFIGS[name].read_text())["model"], pretrained=False)
    assert model_cfg["token_layers"] >= 1
    assert model_cfg["mhe_heads"] * model_cfg["mhe_rank"] <= model_cfg["dim"] // 2
    msfem = MSFEM(model_cfg, seed=0).eval()
    assert msfem.encoder is not None and len(msfem.encoder.layers) == model_cfg["token_layers"]
    px = int(model_cfg["input_px"])
    with torch.no_grad():
        fmap = msfem.backbone(torch.zeros(1, 3, px, px))
    assert fmap.shape[-2] >= 2 and fmap.shape[-1] >= 2, fmap.shape
    assert msfem.grid == fmap.shape[-1]  # the grid the position embedding is learned on is the real one


def test_a_methods_train_override_changes_only_the_keys_it_names(tmp_path):
    """Schema defaults must not be injected into `methods.<m>.train`: the override is merged over the global train
    section, so an injected default (val_bags: null once) silently replaced the global value for that method."""
    from msamil.config import method_settings

    defs = yaml.safe_load((REPO / "workflow/schemas/config.schema.yaml").read_text())["$defs"]
    for section in ("train", "model"):  # the sections a method overrides
        assert not [k for k, v in defs[section]["properties"].items() if "default" in v], section
    cfg = write_config(tmp_path, {"methods": {"m": {"kind": "msamil", "train": {"patience": 20}}},
                                  "train": {**load_default_config()["train"], "val_bags": 3}})
    resolved, _ = resolve(REPO, tmp_path / "run", "--configfile", str(cfg))
    assert resolved["methods"]["m"]["train"] == {"patience": 20}
    train = method_settings(resolved, "m")["train"]
    assert (train["patience"], train["val_bags"]) == (20, 3)
