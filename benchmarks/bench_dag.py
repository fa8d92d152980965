"""Benchmark: how long Snakemake takes to plan a 2,000-slide dataset (issue 17, item 8).

A dry run has to plan every per-slide job (tissue, cache, ...) and every per-fold job downstream, which it can only
do once the inspect checkpoint's outputs exist. So the script fakes exactly what planning reads and nothing else:
a slide table of N entries whose files exist (empty: no pixel is read), each slide's inspect decision (with its
size, which the per-slide resources are computed from) and the inspect gather's tables. Then it times
`snakemake -n` on this checkout and, in the same run, on a reference commit (default: the parent of the first
commit that introduced this script's DAG, i.e. the old DAG where every training job listed every cache), faked
the same way for that version's layout (a synthetic dataset of N slides with its slides.tsv).

    .venv/bin/python benchmarks/bench_dag.py                     # 2,000 slides, both DAGs
    .venv/bin/python benchmarks/bench_dag.py --slides 200 --ref none

Results go to stdout and to the `bench_dag` section of benchmarks/RESULTS.md (replaced on rerun).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tarfile
import tempfile
import time
from io import BytesIO
from pathlib import Path

import pandas as pd
import yaml
from results_md import update_section

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # this checkout's msamil, whichever one the environment has installed
SNAKEMAKE = str(Path(sys.executable).with_name("snakemake"))
#: The last commit with the old DAG (slides.tsv input of every tissue/cache job, every cache an input of every
#: training job): main before the per-slide inspect jobs landed.
OLD_REF = "d497645"
#: issue 17 item 8: a dry run over 2,000 slides takes at most this long (seconds, wall) on the 2-core machine
GOAL_S = 15.0
SLIDE_ROW = {"label_idx": 0, "mpp": 0.25, "mpp_source": "openslide", "objective_power": 40.0, "magnification": 40.0,
             "width": 50000, "height": 40000, "levels": 4, "vendor": "aperio", "tissue_fraction": 0.4}


def _touch(path: Path, mtime: float, text: str = "") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    os.utime(path, (mtime, mtime))


def _config(base: dict, datasets: dict, n_slides: int) -> dict:
    cfg = dict(base)
    cfg["datasets"] = list(datasets)
    cfg["dataset_config"] = datasets
    cfg["synthetic"] = {**cfg["synthetic"], "n_slides": n_slides, "n_patients": n_slides}
    return cfg


def _rows(n: int, label_of, prefix: str = "s") -> list[dict]:
    return [{"slide": f"{prefix}{i:03d}", "patient": f"p{i:05d}", "label": label_of(i)} for i in range(n)]


def _now() -> float:
    """Fake files are dated now, after every rule script: an output older than its script counts as changed code."""
    return time.time() - 30


def fake_new(work: Path, n: int) -> Path:
    """This checkout: a user cohort `bench` (source: local, slide_table) with its decisions and gather tables."""
    from msamil.slides.outcomes import EXCLUDED_COLUMNS, SLIDES_COLUMNS, write_decision

    t0 = _now()
    rows = _rows(n, lambda i: "ab"[i % 2])
    for r in rows:
        r.update(path=f"slides/{r['slide']}.svs", annotation="", mpp="", exclude="")
        _touch(work / "bench" / r["path"], t0)
    pd.DataFrame(rows).to_csv(work / "bench" / "slides.tsv", sep="\t", index=False)
    os.utime(work / "bench" / "slides.tsv", (t0, t0))
    usable = []
    for r in rows:
        source = {**r, "path": f"bench/{r['path']}"}
        row = {**{k: source[k] for k in ("slide", "patient", "label", "path", "annotation")}, **SLIDE_ROW}
        usable.append(row)
        decision = work / "results" / "bench" / "inspect" / f"{r['slide']}.json"
        write_decision(decision, source, row=row, excluded=None)
        os.utime(decision, (t0 + 10, t0 + 10))
        _touch(work / "results" / "bench" / "qc" / f"{r['slide']}.png", t0 + 10)
    gathered = work / "results" / "bench" / "inspect"
    pd.DataFrame(usable, columns=SLIDES_COLUMNS).to_csv(gathered / "slides.tsv", sep="\t", index=False)
    pd.DataFrame(columns=EXCLUDED_COLUMNS).to_csv(gathered / "excluded.tsv", sep="\t", index=False)
    for name in ("slides.tsv", "excluded.tsv"):
        os.utime(gathered / name, (t0 + 20, t0 + 20))
    base = yaml.safe_load((REPO / "config.yaml").read_text())
    cfg = _config(base, {"bench": {"source": "local", "slide_table": "bench/slides.tsv",
                                   "classes": ["a", "b"]}}, 30)
    path = work / "config.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def fake_old(work: Path, repo: Path, n: int) -> Path:
    """The reference commit: a synthetic dataset of n slides, raw files present, the inspect checkpoint done."""
    t0 = _now()
    raw = work / "results" / "synthetic" / "raw"
    rows = _rows(n, lambda i: ("benign", "malignant")[i % 2], prefix="syn_")
    for r in rows:
        r.update(path=f"results/synthetic/raw/slides/{r['slide']}.svs",
                 annotation=f"results/synthetic/raw/annotations/{r['slide']}.geojson", mpp="")
        _touch(work / r["path"], t0)
        _touch(work / r["annotation"], t0)
    pd.DataFrame(rows).to_csv(raw / "table.tsv", sep="\t", index=False)
    os.utime(raw / "table.tsv", (t0 - 5, t0 - 5))
    cols = ["slide", "patient", "label", "label_idx", "path", "annotation", "mpp", "mpp_source", "objective_power",
            "magnification", "width", "height", "levels", "vendor", "tissue_fraction"]
    slides = pd.DataFrame([{**r, **SLIDE_ROW} for r in rows])[cols]
    out = work / "results" / "synthetic"
    slides.to_csv(out / "slides.tsv", sep="\t", index=False)
    pd.DataFrame(columns=["slide", "path", "reason", "fix"]).to_csv(out / "excluded.tsv", sep="\t", index=False)
    (out / "qc").mkdir(exist_ok=True)
    for p in (out / "slides.tsv", out / "excluded.tsv", out / "qc"):
        os.utime(p, (t0 + 20, t0 + 20))
    base = yaml.safe_load((repo / "config.yaml").read_text())
    cfg = _config(base, {"synthetic": base["dataset_config"]["synthetic"]}, n)
    path = work / "config.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def export(ref: str, dest: Path) -> Path:
    """The workflow as it was at `ref` (git archive), so both DAGs are timed in one run on one machine."""
    data = subprocess.run(["git", "-C", str(REPO), "archive", ref], capture_output=True, check=True).stdout
    with tarfile.open(fileobj=BytesIO(data)) as tar:
        tar.extractall(dest, filter="data")
    return dest


def dry_run(snakefile: Path, work: Path, config: Path) -> dict[str, float]:
    """Wall and CPU seconds, peak RSS and the number of planned jobs of one `snakemake -n`."""
    cmd = ["/usr/bin/time", "-f", "TIME %e %U %S %M", SNAKEMAKE, "-s", str(snakefile), "-d", str(work),
           "--configfile", str(config), "--replace-workflow-config", "--workflow-profile", "none", "-n",
           "--quiet", "rules", "--cores", "1"]
    env = {**os.environ, "PYTHONPATH": str(snakefile.parent)}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1800)
    out = done.stdout + done.stderr
    if done.returncode != 0:
        raise RuntimeError(f"dry run failed:\n{out[-4000:]}")
    wall, user, sys_, rss = re.search(r"TIME (\S+) (\S+) (\S+) (\S+)", out).groups()
    total = re.search(r"^total\s+(\d+)", out, re.M)
    return {"wall_s": float(wall), "cpu_s": float(user) + float(sys_), "rss_mb": int(rss) / 1024,
            "jobs": int(total.group(1)) if total else 0}


def measure(n: int, ref: str | None, repeat: int) -> dict[str, list[dict[str, float]]]:
    """Every run of each DAG; under the key "load", the machine's load averages (1, 5, 15 min) before and after."""
    results: dict[str, list[dict[str, float]]] = {}
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        variants = {"new": (REPO / "Snakefile", fake_new(root / "new", n), root / "new")}
        if ref:
            old_repo = export(ref, root / "old_repo")
            variants["old"] = (old_repo / "Snakefile", fake_old(root / "old", old_repo, n), root / "old")
        for _ in range(repeat):  # interleaved, so a burst of load on the shared machine hits both alike
            for name, (snakefile, config, work) in variants.items():
                results.setdefault(name, []).append(dry_run(snakefile, work, config))
                print(name, json.dumps(results[name][-1]), flush=True)
    results["load"] = [dict(zip(("1min", "5min", "15min"), load, strict=True)) for load in (load_before, os.getloadavg())]
    return results


def _load(load: dict[str, float]) -> str:
    return " / ".join(f"{load[k]:.2f}" for k in ("1min", "5min", "15min"))


def _best(runs: list[dict[str, float]]) -> dict[str, float]:
    return min(runs, key=lambda r: r["cpu_s"])


def report(results: dict[str, list[dict[str, float]]], n: int, ref: str | None) -> str:
    lines = [
        "## Planning a 2,000-slide dataset (`benchmarks/bench_dag.py`, issue 17 item 8)", "",
        f"`snakemake -n` over {n} fake slide-table entries (files exist, no pixels are read; the inspect decisions "
        "and gather tables exist, so the dry run plans every job after inspection), best of "
        f"{len(results['new'])} interleaved runs by CPU time, on {platform.machine()} with "
        f"{os.cpu_count()} CPUs shared with other users (wall time is noisy; CPU time and the ratio are not).", "",
        "| DAG | jobs planned | wall s | CPU s | peak RSS MB |", "|---|---:|---:|---:|---:|",
    ]
    names = {"new": "this checkout: one decision file per slide, one `slides.tsv` manifest per dataset",
             "old": f"reference `{ref}`: every cache an input of every training job"}
    for key in ("old", "new"):
        if key in results:
            b = _best(results[key])
            lines.append(f"| {names[key]} | {b['jobs']} | {b['wall_s']:.1f} | {b['cpu_s']:.1f} | {b['rss_mb']:.0f} |")
    if "old" in results:
        old, new = _best(results["old"]), _best(results["new"])
        lines += ["", f"Ratio new / old: wall {new['wall_s'] / old['wall_s']:.2f}, CPU "
                  f"{new['cpu_s'] / old['cpu_s']:.2f}. The new plan has no per-slide `features` jobs (removed in "
                  "issue 14), hence fewer jobs."]
    if n == 2000:
        wall = _best(results["new"])["wall_s"]
        lines += ["", f"Goal of issue 17, at most {GOAL_S:.0f} s for 2,000 slides: "
                  f"{'met' if wall <= GOAL_S else 'not met'} ({wall:.1f} s wall)."]
    if "load" in results:
        before, after = results["load"]
        lines += ["", f"Load average of the machine (1 / 5 / 15 min) before the runs {_load(before)}, after "
                  f"{_load(after)} (the runs themselves add about 1; more means other jobs shared the CPUs)."]
    lines += ["", f"Reproduce: `.venv/bin/python benchmarks/bench_dag.py --slides {n}`"]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slides", type=int, default=2000)
    parser.add_argument("--ref", default=OLD_REF, help="git ref of the old DAG, or 'none'")
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md alone")
    args = parser.parse_args()
    ref = None if args.ref == "none" else args.ref
    results = measure(args.slides, ref, args.repeat)
    section = report(results, args.slides, ref)
    print(section)
    if not args.no_write:
        update_section("bench_dag", section)


if __name__ == "__main__":
    main()
