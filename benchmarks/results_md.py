"""Replace one benchmark's section of benchmarks/RESULTS.md, leaving every other section as it is."""

from __future__ import annotations

import re
from pathlib import Path

from msamil.util.atomic import write_text

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"


def markers(name: str) -> tuple[str, str]:
    return f"<!-- {name}:start -->", f"<!-- {name}:end -->"


def update_section(name: str, body: str, path: Path = RESULTS) -> None:
    """Put `body` between the section's start and end markers (appending the section if it is new)."""
    start, end = markers(name)
    section = f"{start}\n{body.strip()}\n{end}\n"
    text = path.read_text() if path.exists() else "# Benchmark results\n\nEach section is written by the script it names.\n\n"
    pattern = re.compile(re.escape(start) + ".*?" + re.escape(end) + "\n?", re.S)
    text = pattern.sub(lambda _: section, text) if pattern.search(text) else text.rstrip("\n") + "\n\n" + section
    write_text(path, text)
