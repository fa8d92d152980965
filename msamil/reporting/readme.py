"""Put a run's tables and one figure into README.md: `python -m msamil.reporting.readme` (or `make readme`).

The README shows what two runs produce: `make demo` (block `demo`) and the decisive synthetic benchmark
(`--configfile presets/synthetic_benchmark.yaml`, block `benchmark`). This regenerates a block from that run's
`results/` so it never drifts: `python -m msamil.reporting.readme --block benchmark --results <its results>`.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
from pathlib import Path

import pandas as pd

from msamil.util.atomic import write_text

BLOCKS = ("demo", "benchmark")


def markers(block: str = "demo") -> tuple[str, str]:
    """The README comments that delimit a block."""
    if block not in BLOCKS:
        raise SystemExit(f"unknown README block {block!r}; one of {', '.join(BLOCKS)}")
    return f"<!-- {block}-results:start -->", f"<!-- {block}-results:end -->"


START, END = markers("demo")


def demo_section(results: Path, docs: Path, figure: str, readme_dir: Path, block: str = "demo") -> str:
    """Markdown for the README: the main, ablation and comparison tables and `figure` (copied under `docs`)."""
    start, end = markers(block)
    tables = results / "tables"
    missing = [n for n in ("main_results.md", "ablation.md", "comparisons.md", "main_results.tsv")
               if not (tables / n).exists()]
    if missing:
        raise SystemExit(f"{tables}: no {', '.join(missing)}; run `snakemake {tables}/comparisons.md` first")
    resamples = int(pd.read_csv(tables / "main_results.tsv", sep="\t")["n_resamples"].max())
    docs.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(results / "figures" / f"{figure}.png", docs / f"{figure}.png")
    parts = [
        start,
        "Main results (`results/tables/main_results.md`): pooled out-of-fold AUC and ACC over all test slides with",
        f"95 % percentile intervals from {resamples} bootstrap resamples stratified by class, and AUC as mean ± std",
        "over folds. Bold marks the highest point estimate, not a significant difference.",
        "",
        (tables / "main_results.md").read_text().strip(),
        "",
        "Ablation of MsaMIL-Net (`results/tables/ablation.md`):",
        "",
        (tables / "ablation.md").read_text().strip(),
        "",
        "Paired comparisons with MsaMIL-Net on the same slides (`results/tables/comparisons.md`): ΔAUC = MsaMIL-Net",
        "minus the method, paired stratified-bootstrap 95 % interval and p-value, Holm-adjusted within the dataset,",
        "DeLong's test as a check. A verdict needs the interval to exclude 0 and both adjusted p-values below 0.05:",
        "",
        (tables / "comparisons.md").read_text().strip(),
        "",
        f"![{figure}]({os.path.relpath(docs / f'{figure}.png', readme_dir)})",
        end,
    ]
    return "\n".join(parts)


def update_readme(readme: Path, section: str, block: str = "demo") -> None:
    start, end = markers(block)
    text = readme.read_text()
    pattern = re.compile(re.escape(start) + ".*?" + re.escape(end), re.S)
    if not pattern.search(text):
        raise SystemExit(f"{readme}: no {start} ... {end} block to replace")
    write_text(readme, pattern.sub(lambda _: section, text))  # a kill mid-write never truncates the README


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=Path("results"))
    parser.add_argument("--readme", type=Path, default=Path("README.md"))
    parser.add_argument("--block", choices=BLOCKS, default="demo", help="which README block the run's tables fill")
    parser.add_argument("--docs", type=Path, default=None, help="where the figure is copied (default docs/<block>)")
    parser.add_argument("--figure", default="roc_synthetic")
    args = parser.parse_args(argv)
    docs = args.docs or Path("docs") / args.block
    update_readme(args.readme, demo_section(args.results, docs, args.figure, args.readme.parent, args.block),
                  args.block)


if __name__ == "__main__":
    main()
