"""Put the demo's main table and one figure into README.md: `python -m msamil.reporting.readme` (or `make readme`).

The README shows what `make demo` produces; this regenerates that part from `results/` so it never drifts.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
from pathlib import Path

START, END = "<!-- demo-results:start -->", "<!-- demo-results:end -->"


def demo_section(results: Path, docs: Path, figure: str, readme_dir: Path) -> str:
    """Markdown for the README: the main table, the ablation table and `figure` (copied under `docs`)."""
    tables = results / "tables"
    docs.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(results / "figures" / f"{figure}.png", docs / f"{figure}.png")
    parts = [
        START,
        "Main results (mean ± std over folds, test folds only; from `results/tables/main_results.md`):",
        "",
        (tables / "main_results.md").read_text().strip(),
        "",
        "Ablation of MsaMIL-Net (`results/tables/ablation.md`):",
        "",
        (tables / "ablation.md").read_text().strip(),
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
