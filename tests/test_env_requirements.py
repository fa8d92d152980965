"""The conda env pins agree with each other's published requirements (issue 17: smp 0.3.4 wanted timm==0.9.7
while the env pinned timm 1.0.11, so the env could not solve). Offline: the facts were read from the packages'
released metadata into tests/data/env_requirements.yaml, with their sources."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from packaging.specifiers import SpecifierSet
from packaging.version import Version

REPO = Path(__file__).resolve().parents[1]
ENVS = sorted((REPO / "envs").glob("*.yaml"))
FACTS = yaml.safe_load((Path(__file__).parent / "data" / "env_requirements.yaml").read_text())["packages"]


def pins(env: Path) -> dict[str, str]:
    """name -> pinned version of a conda env file (`name=version[=build]`)."""
    out = {}
    for dep in yaml.safe_load(env.read_text())["dependencies"]:
        if isinstance(dep, str):
            name, version = dep.split("::")[-1].split("=")[:2]
            out[name.strip().lower()] = version.strip()
    return out


def conflicts(pinned: dict[str, str]) -> list[str]:
    """Every declared requirement of a pinned package on another pinned package that the pin violates."""
    found = []
    for name, version in pinned.items():
        facts = FACTS.get(name, {}).get(version)
        if facts is None:
            found.append(f"{name}={version}: no recorded requirements (add them to tests/data/env_requirements.yaml)")
            continue
        for dep, spec in facts["requires"].items():
            if dep in pinned and Version(pinned[dep]) not in SpecifierSet(spec or ""):
                found.append(f"{name}={version} requires {dep}{spec}, env pins {dep}={pinned[dep]} "
                             f"({facts['source']})")
    return found


@pytest.mark.parametrize("env", ENVS, ids=[p.name for p in ENVS])
def test_pins_satisfy_each_others_requirements(env: Path) -> None:
    assert not conflicts(pins(env)), "\n".join(conflicts(pins(env)))


def test_the_check_catches_the_old_smp_pin() -> None:
    old = {**pins(REPO / "envs" / "torch.yaml"), "segmentation-models-pytorch": "0.3.4"}
    assert any("timm==0.9.7" in c for c in conflicts(old))
    assert any("no recorded requirements" in c for c in conflicts({**old, "timm": "9.9.9"}))


def test_every_fact_names_its_source() -> None:
    for name, versions in FACTS.items():
        for version, facts in versions.items():
            assert facts["source"].strip() and isinstance(facts["requires"], dict), (name, version)
            for spec in facts["requires"].values():
                SpecifierSet(spec or "")  # parses


def test_torch_env_can_pick_a_cuda_build() -> None:
    """No build string or cpu-only package forces the CPU pytorch; how to get the CUDA build is written down."""
    deps = [d for d in yaml.safe_load((REPO / "envs" / "torch.yaml").read_text())["dependencies"] if isinstance(d, str)]
    torch_spec = next(d for d in deps if d.startswith("pytorch="))
    assert torch_spec.count("=") == 1, torch_spec
    assert not {"cpuonly", "pytorch-cpu"} & {d.split("=")[0] for d in deps}
    for doc in ("envs/torch.yaml", "README.md", "profiles/README.md"):
        assert "CONDA_OVERRIDE_CUDA=12.6" in (REPO / doc).read_text(), doc


def test_readme_states_the_pinned_versions() -> None:
    readme = (REPO / "README.md").read_text()
    torch_pins = pins(REPO / "envs" / "torch.yaml")
    for name in ("pytorch", "torchvision", "timm", "segmentation-models-pytorch"):
        assert f"{name} {torch_pins[name]}" in readme, name
