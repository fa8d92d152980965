"""`msamil` command line: quick looks at slides and caches without running the workflow.

The workflow itself runs through Snakemake (`snakemake --cores 8 --use-conda`); this tool answers the questions
users ask before and after a run: what MPP and levels does this slide have, what is in this cache file.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence


def _slide_info(args: argparse.Namespace) -> int:
    from msamil.errors import SlideError
    from msamil.slides.slide import Slide

    status = 0
    for path in args.slides:
        try:
            with Slide.open(path, slide_id=path, override_mpp=args.mpp) as slide:
                info = slide.info
                record = {k: getattr(info, k) for k in info.__dataclass_fields__}
        except SlideError as err:
            record = {"path": path, "error": err.reason, "fix": err.fix}
            status = 1
        print(json.dumps(record, default=str))
    return status


def _cache_info(args: argparse.Namespace) -> int:
    from msamil.cache.access import CacheError, cache_error, open_cache

    status = 0
    for path in args.caches:
        try:
            with open_cache(path, require_complete=False) as h5:
                # a failure record (a slide excluded at tissue or cache) is shown as it is, with its reason
                if not h5.attrs.get("complete", False) and "failed_reason" not in h5.attrs:
                    raise cache_error(path, "incomplete (no complete=True attribute: its writer never finished)")
                record = {"path": path, **{k: _plain(v) for k, v in h5.attrs.items()}}
                for scale in ("20x", "10x", "5x"):
                    if scale in h5:
                        record[f"n_{scale}"] = int(h5[scale]["coords"].shape[0])
        except CacheError as err:
            record = {"path": path, "error": err.reason, "fix": err.fix}
            status = 1
        print(json.dumps(record, default=str))
    return status


def _plain(value: object) -> object:
    """An HDF5 attribute as JSON: arrays (the workflow writes `scales`, `tissue_min`) as lists, bytes as text."""
    if hasattr(value, "tolist"):
        value = value.tolist()  # numpy scalars become Python scalars, arrays lists
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    if isinstance(value, list):
        return [v.decode(errors="replace") if isinstance(v, bytes) else v for v in value]
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="msamil", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"msamil {_version()}")
    sub = parser.add_subparsers(dest="command", required=True)
    info = sub.add_parser("slide-info", help="MPP, magnification, levels and vendor of slides, one JSON line each")
    info.add_argument("slides", nargs="+", help="slide files (anything OpenSlide reads)")
    info.add_argument("--mpp", type=float, default=None, help="MPP override for slides that lack one")
    info.set_defaults(func=_slide_info)
    cache = sub.add_parser("cache-info", help="attributes and patch counts per scale of cache .h5 files")
    cache.add_argument("caches", nargs="+")
    cache.set_defaults(func=_cache_info)
    return parser


def _version() -> str:
    from msamil import __version__

    return __version__


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
