"""Static check that `snakemake --use-conda` builds environments able to run every rule.

No conda here (and no network in tests), so instead of building the environments we read them: each env file
parses, is pinned to conda-forge, and lists a package for every third-party module its rules' scripts import,
following the `msamil` modules they import (transitively, lazy imports included; imports guarded by
`except ImportError` are optional and skipped).
"""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

import pytest
import yaml
from test_lint import workflow_rules

REPO = Path(__file__).resolve().parents[1]
ENVS = sorted((REPO / "envs").glob("*.yaml"))

#: import name -> conda-forge package name, where they differ
IMPORT_TO_PACKAGE = {
    "cv2": "opencv", "PIL": "pillow", "sklearn": "scikit-learn", "yaml": "pyyaml", "openslide": "openslide-python",
    "skimage": "scikit-image", "torch": "pytorch", "segmentation_models_pytorch": "segmentation-models-pytorch",
    "matplotlib": "matplotlib-base", "seaborn": "seaborn-base", "jinja2": "jinja2", "attr": "attrs",
    "dateutil": "python-dateutil", "google": "protobuf", "botocore": "boto3", "fastjsonschema": "python-fastjsonschema",
}
#: packages that provide another's import as well (a conda env listing the key also satisfies the values)
PROVIDES = {"matplotlib": {"matplotlib-base"}, "seaborn": {"seaborn-base"}, "boto3": {"botocore"}}
#: imports satisfied without an env entry: Snakemake puts its own path on the script's sys.path
HOST_PROVIDED = {"snakemake", "msamil"}


def _env(path: Path) -> dict:
    data = yaml.safe_load(path.read_text())
    assert isinstance(data, dict) and data.get("dependencies"), f"{path.name}: no dependencies"
    return data


def _spec_name(spec: str) -> str:
    return re.split(r"[=<>!~\[ ;@]", spec.strip(), maxsplit=1)[0].lower()


def env_packages(path: Path) -> set[str]:
    names = set()
    for dep in _env(path)["dependencies"]:
        if isinstance(dep, dict):
            names |= {_spec_name(p) for p in dep.get("pip", []) if not p.startswith("-")}
        else:
            names.add(_spec_name(dep.split("::")[-1]))
    for name in list(names):
        names |= PROVIDES.get(name, set())
    return names


def _optional(node: ast.AST, parents: dict[ast.AST, ast.AST]) -> bool:
    """Inside `try: ... except ImportError` (an optional dependency) or `if TYPE_CHECKING:`."""
    child, parent = node, parents.get(node)
    while parent is not None:
        if isinstance(parent, ast.Try) and child in parent.body:
            for handler in parent.handlers:
                names = [handler.type] if not isinstance(handler.type, ast.Tuple) else handler.type.elts
                if any(isinstance(n, ast.Name) and n.id in {"ImportError", "ModuleNotFoundError"} for n in names):
                    return True
        if isinstance(parent, ast.If) and "TYPE_CHECKING" in ast.unparse(parent.test):
            return True
        child, parent = parent, parents.get(parent)
    return False


def _module_file(dotted: str) -> Path | None:
    base = REPO.joinpath(*dotted.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _imports(path: Path, package: str | None) -> set[str]:
    """Dotted names imported by one file (relative imports resolved against `package`)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    found = set()
    for node in ast.walk(tree):
        if not isinstance(node, ast.Import | ast.ImportFrom) or _optional(node, parents):
            continue
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
            continue
        module = node.module or ""
        if node.level:
            base = (package or "").split(".")
            base = base[: len(base) - node.level + 1]
            module = ".".join([*base, module] if module else base)
        found.add(module)
        found |= {f"{module}.{alias.name}" for alias in node.names if _module_file(f"{module}.{alias.name}")}
    return found


def third_party_imports(script: Path) -> dict[str, set[str]]:
    """Top-level third-party import name -> files importing it, for a script and the msamil code it reaches."""
    out: dict[str, set[str]] = {}
    todo, seen = [(script, None)], set()
    while todo:
        path, package = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        for name in _imports(path, package):
            top = name.split(".")[0]
            if top == "msamil":
                parts = name.split(".")
                for i in range(1, len(parts) + 1):  # importing a.b.c runs a/__init__, a/b/__init__ too
                    target = _module_file(".".join(parts[:i]))
                    if target is not None:
                        pkg = ".".join(parts[:i]) if target.name == "__init__.py" else ".".join(parts[: i - 1])
                        todo.append((target, pkg))
            elif top and top not in sys.stdlib_module_names and top != "__future__":
                out.setdefault(top, set()).add(str(path.relative_to(REPO) if path.is_relative_to(REPO) else path))
    return out


def _package(import_name: str) -> str:
    return IMPORT_TO_PACKAGE.get(import_name, import_name.replace("_", "-")).lower()


@pytest.mark.parametrize("env", ENVS, ids=[p.name for p in ENVS])
def test_env_parses_and_is_pinned(env: Path) -> None:
    data = _env(env)
    assert data.get("channels") == ["conda-forge", "nodefaults"], f"{env.name}: channels"
    unpinned = [d for d in data["dependencies"] if isinstance(d, str) and "=" not in d]
    assert not unpinned, f"{env.name}: unpinned {unpinned}"
    assert any(isinstance(d, str) and d.startswith("python=3.1") for d in data["dependencies"])


def test_every_rule_env_covers_its_imports() -> None:
    problems, checked = [], 0
    for rule in workflow_rules():
        if not rule["script"] or not rule["conda"]:
            continue
        env = (Path(rule["snakefile"]).parent / rule["conda"]).resolve()
        have = env_packages(env)
        for name, files in sorted(third_party_imports(Path(rule["script"])).items()):
            if name not in HOST_PROVIDED and _package(name) not in have:
                problems.append(f"{rule['name']} ({env.name}): needs {_package(name)} for `import {name}` "
                                f"in {sorted(files)}")
        checked += 1
    assert checked, "no rule with a script and a conda env found"
    assert not problems, "envs miss packages:\n" + "\n".join(problems)


def test_msamil_is_importable_in_every_env() -> None:
    """Snakemake copies env files to .snakemake/conda/, so `pip: [-e ..]` would not name the checkout; the
    workflow must put its checkout on PYTHONPATH for the jobs instead (or an env must install msamil)."""
    exported = any("PYTHONPATH" in p.read_text() for p in [REPO / "Snakefile", *(REPO / "rules").glob("*.smk")])
    pip = [[q for d in _env(p)["dependencies"] if isinstance(d, dict) for q in d.get("pip", [])] for p in ENVS]
    installs = all(any("msamil" in q or q.startswith(("-e", ".", "/")) for q in entries) for entries in pip)
    assert exported or installs, ("rule scripts import msamil, but no env installs it and the workflow does not "
                                  "export PYTHONPATH (add `os.environ['PYTHONPATH'] = workflow.basedir ...` to "
                                  "the Snakefile)")


def test_import_scan_sees_lazy_and_skips_optional_imports(tmp_path: Path) -> None:
    script = tmp_path / "s.py"
    script.write_text("import os\nfrom msamil.datasets.download import fetch_source\n"
                      "def f():\n    import pyvips\n")
    found = third_party_imports(script)
    assert "pyvips" in found and "tqdm" in found and "os" not in found
    assert "boto3" not in found  # download.py imports it under `except ImportError`
