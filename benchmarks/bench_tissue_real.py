"""Tissue detection and the brightfield check on real public slides, judged against hand-drawn outlines.

Run: .venv/bin/python benchmarks/bench_tissue_real.py SLIDE_DIR [--manifest benchmarks/real_slides.json]
         [--outlines benchmarks/real_outlines] [--qc OUT_DIR] [--set key=value ...] [--heldout-only]
         [--assemble CLONES_DIR]

The slides are NOT part of the repository (third-party pixels). Each manifest entry names a GitHub repository,
commit and path; clone those repositories into CLONES_DIR (as CLONES_DIR/<name> or CLONES_DIR/<owner>+<name>)
and --assemble copies each file (`git show commit:path`) into SLIDE_DIR under the manifest's file name first.
Per slide, this reports what the workflow would do at `seg_mpp` (or at the image's own resolution when coarser):

- brightfield: `msamil.slides.brightfield` on the file's metadata and, separately, on a thumbnail (`ok` or the
  reason; inspection excludes a slide when either finds a reason);
- tissue fraction and number of fragments of `msamil.tissue.detect.tissue_mask` (config defaults, or --set);
- IoU against the hand outline (GeoJSON in level-0 pixels of the file; features with `"role": "ignore"` mark
  ambiguous areas left out of the score), and how many outlined fragments the mask finds (>= 50 % covered).

Manifest entries: name, file, repo, commit, path, note, scanner, stain, kind (brightfield | fluorescence), reader (openslide |
image | tiff-channels), mpp (null: from the file), mpp_basis, outline (file name or null), heldout, judged, and
optionally min_fraction for slides judged by eye. --qc writes one overlay PNG per slide there; --mpp-scale
multiplies the manifest's MPPs (the estimated ones; file MPPs are used as they are) to test their influence.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import tifffile

from msamil.slides.brightfield import downsample_for_check, metadata_problem, pixel_problem
from msamil.slides.slide import Slide
from msamil.tissue.detect import TISSUE_DEFAULTS, overlay, tissue_mask

HERE = Path(__file__).resolve().parent


def _read_plain(path: Path) -> np.ndarray:
    """An RGB uint8 image from a plain TIFF/JPEG/PNG (alpha composited onto white)."""
    if path.suffix.lower() in {".tif", ".tiff"}:
        img = tifffile.imread(path)
    else:
        img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        img = cv2.cvtColor(img, cv2.COLOR_BGRA2RGBA if img.shape[2] == 4 else cv2.COLOR_BGR2RGB)
    if img.shape[2] == 4:
        a = img[..., 3:4].astype(np.float32) / 255.0
        img = (img[..., :3] * a + 255.0 * (1.0 - a)).round().astype(np.uint8)
    return np.ascontiguousarray(img[..., :3])


def _read_channels(path: Path, colours: list[list[int]]) -> tuple[np.ndarray, dict[str, str]]:
    """A multi-page greyscale fluorescence TIFF (one page per channel) rendered as a viewer would: each channel
    scaled to its 99.5th percentile and tinted with its colour; the first page's description is its metadata."""
    with tifffile.TiffFile(path) as tif:
        pages = [tif.pages[i].asarray().astype(np.float32) for i in range(len(colours))]
        props = {"tiff.ImageDescription": tif.pages[0].description}
    rgb = np.zeros(pages[0].shape + (3,), np.float32)
    for chan, colour in zip(pages, colours, strict=True):
        rgb += np.clip(chan / max(1.0, float(np.percentile(chan, 99.5))), 0, 1)[..., None] * np.asarray(colour)
    return np.clip(rgb, 0, 255).astype(np.uint8), props


def load(entry: dict[str, Any], slide_dir: Path, seg_mpp: float) -> tuple[np.ndarray, float, float, np.ndarray,
                                                                          dict[str, str]]:
    """(image at the working MPP, working MPP, level-0 MPP, check thumbnail, metadata) for one manifest entry."""
    path = slide_dir / entry["file"]
    reader = entry["reader"]
    if reader == "openslide":
        with Slide.open(path, entry["name"], override_mpp=entry.get("mpp")) as slide:
            mpp = slide.info.mpp
            work = max(seg_mpp, mpp)
            info = slide.info
            thumb = slide.image_at_mpp(max(mpp, max(info.width, info.height) * mpp / 1024))
            return slide.image_at_mpp(work), work, mpp, thumb, dict(slide.osr.properties)
    if reader == "tiff-channels":
        full, props = _read_channels(path, entry["colours"])
    else:
        full, props = _read_plain(path), {}
    mpp = float(entry["mpp"])
    work = max(seg_mpp, mpp)
    h, w = full.shape[:2]
    s = mpp / work
    img = full if s == 1.0 else cv2.resize(full, (max(1, round(w * s)), max(1, round(h * s))),
                                           interpolation=cv2.INTER_AREA)
    return img, work, mpp, downsample_for_check(full), props


def read_outline(path: Path) -> tuple[list[list[np.ndarray]], list[np.ndarray]]:
    """(tissue polygons as rings [outer, holes...], ignore polygons) from a hand-outline GeoJSON."""
    geo = json.loads(path.read_text())
    tissue, ignore = [], []
    for feat in geo["features"]:
        rings = [np.asarray(r, dtype=np.float64) for r in feat["geometry"]["coordinates"]]
        if feat.get("properties", {}).get("role") == "ignore":
            ignore.append(rings[0])
        else:
            tissue.append(rings)
    return tissue, ignore


def rasterise(polys: list[np.ndarray], shape: tuple[int, int], scale: float, value: int = 1,
              base: np.ndarray | None = None) -> np.ndarray:
    """Fill level-0 polygons into a mask whose pixel i covers level-0 [i/scale, (i+1)/scale) (sub-pixel exact)."""
    out = np.zeros(shape, np.uint8) if base is None else base
    shift = 4
    pts = [np.round((p * scale - 0.5) * (1 << shift)).astype(np.int32) for p in polys]
    cv2.fillPoly(out, pts, value, lineType=cv2.LINE_8, shift=shift)
    return out


def score(mask: np.ndarray, outline: Path, scale: float) -> dict[str, Any]:
    """IoU (ignore areas left out) and outlined fragments found (>= 50 % of each outlined fragment covered)."""
    tissue, ignore = read_outline(outline)
    truth = np.zeros(mask.shape, np.uint8)
    found = 0
    for rings in tissue:
        one = rasterise([rings[0]], mask.shape, scale)
        if len(rings) > 1:
            one = rasterise(rings[1:], mask.shape, scale, value=0, base=one)
        found += int(mask[one > 0].mean() >= 0.5) if one.any() else 0
        truth |= one
    care = rasterise(ignore, mask.shape, scale) == 0 if ignore else np.ones(mask.shape, bool)
    t, m = truth.astype(bool) & care, mask & care
    iou = float((t & m).sum() / max(1, (t | m).sum()))
    return {"iou": iou, "outlined": len(tissue), "found": found}


def assemble(manifest: dict[str, Any], clones: Path, slide_dir: Path) -> None:
    """Copy every manifest file out of local clones of its repository (`git show commit:path`)."""
    slide_dir.mkdir(parents=True, exist_ok=True)
    for entry in manifest["slides"]:
        owner, name = entry["repo"].split("/")
        repo = next((d for d in (clones / f"{owner}+{name}" / "repo", clones / f"{owner}+{name}", clones / name,
                                 clones / owner / name) if d.exists()), None)
        if repo is None:
            print(f"skip {entry['name']}: no clone of {entry['repo']} in {clones}", file=sys.stderr)
            continue
        blob = subprocess.run(["git", "-C", str(repo), "show", f"{entry['commit']}:{entry['path']}"],
                              capture_output=True, check=True).stdout
        (slide_dir / entry["file"]).write_bytes(blob)


def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    manifest = json.loads(Path(args.manifest).read_text())
    if getattr(args, "assemble", None):
        assemble(manifest, Path(args.assemble), Path(args.slide_dir))
    cfg = dict(TISSUE_DEFAULTS)
    for item in args.set:
        key, value = item.split("=", 1)
        cfg[key] = float(value)
    seg_mpp = float(cfg.pop("seg_mpp"))
    rows = []
    for entry in manifest["slides"]:
        if args.heldout_only and not entry.get("heldout"):
            continue
        if not (Path(args.slide_dir) / entry["file"]).exists():
            print(f"skip {entry['name']}: {entry['file']} not in {args.slide_dir}", file=sys.stderr)
            continue
        if entry.get("mpp") is not None and args.mpp_scale != 1.0:
            entry = {**entry, "mpp": float(entry["mpp"]) * args.mpp_scale}
        img, work, mpp, thumb, props = load(entry, Path(args.slide_dir), seg_mpp)
        meta, pixels = metadata_problem(props), pixel_problem(thumb)
        row: dict[str, Any] = {"name": entry["name"], "scanner": entry["scanner"], "stain": entry["stain"],
                               "kind": entry["kind"], "heldout": bool(entry.get("heldout")),
                               "metadata": "ok" if meta is None else f"NOT: {meta}",
                               "pixels": "ok" if pixels is None else f"NOT: {pixels}"}
        if entry["kind"] == "brightfield":
            mask = tissue_mask(img, work, **cfg)
            n_frag = cv2.connectedComponents(mask.astype(np.uint8), connectivity=8)[0] - 1
            row.update(fraction=float(mask.mean()), fragments=n_frag, work_mpp=work)
            if entry.get("outline"):
                row.update(score(mask, Path(args.outlines) / entry["outline"], mpp / work))
            if args.qc:
                Path(args.qc).mkdir(parents=True, exist_ok=True)
                cap = f"{entry['name']} {100 * mask.mean():.1f}% {n_frag} fragment(s)"
                out = overlay(img, mask, cap)
                cv2.imwrite(str(Path(args.qc) / f"{entry['name']}.png"), cv2.cvtColor(out, cv2.COLOR_RGB2BGR))
        rows.append(row)
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    head = ("| slide | scanner | stain | held out | brightfield (metadata) | brightfield (pixels) | tissue % | "
            "fragments | found / outlined | IoU |")
    lines = [head, "|" + "---|" * 10]
    for r in rows:
        frac = f"{100 * r['fraction']:.1f}" if "fraction" in r else "-"
        found = f"{r['found']} / {r['outlined']}" if "outlined" in r else "-"
        iou = f"{r['iou']:.3f}" if "iou" in r else "-"
        lines.append(f"| {r['name']} | {r['scanner']} | {r['stain']} | {'yes' if r['heldout'] else ''} | "
                     f"{r['metadata']} | {r['pixels']} | {frac} | {r.get('fragments', '-')} | {found} | {iou} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("slide_dir")
    ap.add_argument("--manifest", default=str(HERE / "real_slides.json"))
    ap.add_argument("--outlines", default=str(HERE / "real_outlines"))
    ap.add_argument("--qc", default=None, help="write overlay PNGs here (they hold third-party pixels)")
    ap.add_argument("--set", action="append", default=[], help="override a tissue setting, e.g. threshold=0.03")
    ap.add_argument("--heldout-only", action="store_true")
    ap.add_argument("--mpp-scale", type=float, default=1.0,
                    help="multiply the manifest's (estimated) MPPs by this, to see how much the results hang on them")
    ap.add_argument("--json", action="store_true", help="print rows as JSON instead of a table")
    ap.add_argument("--assemble", default=None, help="first copy the slides out of local git clones in this folder")
    args = ap.parse_args(argv)
    rows = run(args)
    print(json.dumps(rows, indent=1) if args.json else table(rows))


if __name__ == "__main__":
    main()
