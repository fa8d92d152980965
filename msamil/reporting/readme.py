"""Put the demo's tables and one figure into README.md: `python -m msamil.reporting.readme` (or `make readme`).

The README shows what `make demo` produces; this regenerates that part from `results/` so it never drifts.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
from pathlib import Path

import pandas as pd

START, END = "<!-- demo-results:start -->", "<!-- demo-results:end -->"


def demo_section(results: Path, docs: Path, figure: str, readme_dir: Path) -> str:
    """Markdown for the README: the main, ablation and comparison tables and `figure` (copied under `docs`)."""
    tables = results / "tables"
    missing = [n for n in ("main_results.md", "ablation.md", "comparisons.md", "main_results.tsv")
               if not (tables / n).exists()]
    if missing:
        raise SystemExit(f"{tables}: no {', '.join(missing)}; run `snakemake {tables}/comparisons.md` first")
    resamples = int(pd.read_csv(tables / "main_results.tsv", sep="\t")["n_resamples"].max())
    docs.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(results / "figures" / f"{figure}.png", docs / f"{figure}.png")
    parts = [
        START,
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
        END,
    ]
    return "\n".join(parts)


def update_readme(readme: Path, section: str) -> None:
    text = readme.read_text()
    pattern = re.compile(re.escape(START) + ".*?" + re.escape(END), re.S)
    if not pattern.search(text):
        raise SystemExit(f"{readme}: no {START} ... {END} block to replace")
    readme.write_text(pattern.sub(lambda _: section, text))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=Path("results"))
    parser.add_argument("--readme", type=Path, default=Path("README.md"))
    parser.add_argument("--docs", type=Path, default=Path("docs/demo"))
    parser.add_argument("--figure", default="roc_synthetic")
    args = parser.parse_args(argv)
    update_readme(args.readme, demo_section(args.results, args.docs, args.figure, args.readme.parent))


if __name__ == "__main__":
    main()
