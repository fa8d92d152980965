"""The embedded synthetic dataset (DESIGN.md section 9): H&E-like Aperio slides whose label needs two scales.

Every slide shows tissue on a bright background: pink stroma with sparse spindle nuclei and one or two lesion
regions (5-25 % of the tissue, exported as QuPath GeoJSON polygons). The lesion is purple and dense, so a U-Net
at 8 µm/px can segment it. Inside the lesion two independent cues decide the label:

* cellular (visible at 20x, 32 µm fields): *atypical* nuclei, large, pleomorphic, irregular and hyperchromatic,
  versus small round regular nuclei;
* architectural (visible at 5x, 128 µm fields): cells arranged in *gland-like rings* on a lattice of 85-100 µm
  period, versus a disordered labyrinth of cords. Both architectures have the same cell/gap area fraction and the
  same band width, so a 32 µm field looks alike in both; only a field that spans a whole ring tells them apart.

Malignant = atypical nuclei AND rings. Benign slides carry exactly one of the cues (a decoy): atypical nuclei in a
labyrinth, or regular nuclei in rings. Every slide also has a few small clusters of atypical nuclei in normal
stroma, so a model that looks at all tissue (no lesion selection) sees 20x decoys everywhere. A 20x-only model
therefore cannot separate malignant from nuclear decoys, while a model that sees 20x and 5x can.

Everything is drawn in physical units (µm) and converted with the slide's MPP, so a 40x variant (mpp 0.25)
shows the same structures at twice the pixel size. Output is deterministic: the random stream is seeded from
(seed, crc32(slide id)) and the JPEG/TIFF encoders are deterministic.
"""

from __future__ import annotations

import logging
import math
import os
import uuid
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pandas as pd

from msamil.errors import ConfigError
from msamil.slides.svs import write_svs
from msamil.slides.synthetic_draw import (
    architecture,
    decoy_clusters,
    draw_nuclei,
    fibre_texture,
    grid_points,
    lesion_field,
    lesion_nuclei,
    lesion_polygons,
    rasterise,
    select,
    spindle_nuclei,
    tissue_field,
)
from msamil.util.atomic import write_json, write_tsv

log = logging.getLogger("msamil.slides.synthetic")

CLASSES = ("benign", "malignant")
# Keys of the config's `synthetic` section that concern the table, not the drawing of one slide.
TABLE_KEYS = ("n_slides", "n_patients", "positive_fraction")
SLIDE_KEYS = ("width", "height", "tile_size", "jpeg_quality", "lesion_fraction", "mpp")

# Optical densities per unit stain (R, G, B): haematoxylin is blue-purple, eosin pink. Colour = 255 * exp(-OD).
HEMATOXYLIN_OD = np.array([0.55, 0.77, 0.28], np.float32)
EOSIN_OD = np.array([0.10, 0.85, 0.40], np.float32)
NUCLEUS_H_MAX = 2.4  # H density of a nucleus drawn at 255

COARSE_UM = 8.0  # grid of the tissue/lesion fields: the resolution of the tissue mask and the lesion U-Net
LESION_MARGIN_UM = 48.0  # lesion polygons stay this far inside the tissue edge


def slide_ids(n_slides: int) -> list[str]:
    """Slide ids `syn_000`, `syn_001`, ... (rules/synthetic.smk builds the same names without importing this)."""
    return [f"syn_{i:03d}" for i in range(n_slides)]


def slide_rng(seed: int, slide: str) -> np.random.Generator:
    """An independent, reproducible random stream per slide (crc32, unlike hash(), is stable across runs)."""
    return np.random.default_rng([int(seed), zlib.crc32(slide.encode())])


# --------------------------------------------------------------------------------------------- the slide table
def synthetic_table(cfg_synthetic: dict[str, Any], seed: int) -> pd.DataFrame:
    """Slides, patients and labels: exactly round(positive_fraction * n_slides) malignant slides.

    `n_patients` < `n_slides` gives some patients two slides; both slides of a patient share the label (they
    come from the same tumour), which is what makes patient-grouped splits matter.
    """
    n_slides, n_patients = int(cfg_synthetic["n_slides"]), int(cfg_synthetic["n_patients"])
    if not 0 < n_patients <= n_slides or n_slides > 2 * n_patients:
        raise ConfigError(
            f"synthetic.n_patients={n_patients} does not fit synthetic.n_slides={n_slides}: "
            "need n_slides/2 <= n_patients <= n_slides (each patient has one or two slides)"
        )
    n_pos = round(float(cfg_synthetic["positive_fraction"]) * n_slides)
    rng = np.random.default_rng([int(seed), 7919])
    n_pairs = n_slides - n_patients
    sizes = np.array([2] * n_pairs + [1] * (n_patients - n_pairs))
    rng.shuffle(sizes)
    positive = _choose_positive_patients(sizes, n_pos, rng)
    if positive is None:
        raise ConfigError(
            f"synthetic.positive_fraction gives {n_pos} malignant slides, which cannot be split over patients "
            f"with {n_pairs} two-slide patients; change synthetic.positive_fraction or synthetic.n_patients"
        )
    patients = np.repeat(np.arange(n_patients), sizes)
    labels = np.repeat(positive, sizes)
    order = rng.permutation(n_slides)  # slides of one patient need not be neighbours
    return pd.DataFrame({
        "slide": slide_ids(n_slides),
        "patient": [f"pat_{p:03d}" for p in patients[order]],
        "label": [CLASSES[int(v)] for v in labels[order]],
    })


def _choose_positive_patients(sizes: np.ndarray, n_pos: int, rng: np.random.Generator) -> np.ndarray | None:
    """Pick patients whose slide counts add up to exactly `n_pos` (random among the feasible splits)."""
    pairs, singles = np.flatnonzero(sizes == 2), np.flatnonzero(sizes == 1)
    feasible = [k for k in range(len(pairs) + 1) if 0 <= n_pos - 2 * k <= len(singles)]
    if not feasible:
        return None
    k = int(rng.choice(feasible))
    chosen = np.concatenate([rng.choice(pairs, k, replace=False), rng.choice(singles, n_pos - 2 * k, replace=False)])
    positive = np.zeros(len(sizes), bool)
    positive[chosen.astype(int)] = True
    return positive


def write_table(
    out_path: str | os.PathLike[str], cfg_synthetic: dict[str, Any], seed: int, slide_pattern: str,
    annotation_pattern: str,
) -> pd.DataFrame:
    """The dataset's slide table (slide, patient, label, path, annotation, mpp; msamil.slides.table).

    Paths are formatted from `slide_pattern`/`annotation_pattern` (`{slide}` placeholder); relative ones are
    relative to the table's folder, as in any slide table. mpp is empty because the slides carry their own.
    """
    table = synthetic_table(cfg_synthetic, seed)
    table["path"] = [slide_pattern.format(slide=s) for s in table["slide"]]
    table["annotation"] = [annotation_pattern.format(slide=s) for s in table["slide"]]
    table["mpp"] = ""
    write_tsv(out_path, table)
    log.info("wrote %d slides (%d malignant) to %s", len(table), (table["label"] == "malignant").sum(), out_path)
    return table


# ------------------------------------------------------------------------------------------------- one slide
@dataclass(frozen=True)
class SlidePlan:
    """What a slide shows, decided before drawing: the label is `atypical and glandular`."""

    atypical: bool
    glandular: bool
    lesion_fraction: float  # target share of the tissue
    period_um: float  # lattice period of the architecture

    @property
    def malignant(self) -> bool:
        return self.atypical and self.glandular


@dataclass
class SyntheticSlide:
    """A rendered slide: level-0 pixels, the masks it was drawn from and the lesion polygons (level-0 x, y)."""

    rgb: np.ndarray
    tissue: np.ndarray
    lesion: np.ndarray
    polygons: list[np.ndarray]
    info: dict[str, Any] = field(default_factory=dict)


def plan_slide(rng: np.random.Generator, malignant: bool, lesion_fraction: tuple[float, float]) -> SlidePlan:
    """Malignant slides get both cues; a benign one gets one of them at random (the decoy)."""
    lo, hi = sorted(float(v) for v in lesion_fraction)
    margin = 0.15 * (hi - lo)  # rasterising polygons moves the share a little; stay clear of the bounds
    target = float(rng.uniform(lo + margin, hi - margin))
    period = float(rng.uniform(85.0, 100.0))
    if malignant:
        return SlidePlan(True, True, target, period)
    nuclear_decoy = bool(rng.random() < 0.5)
    return SlidePlan(nuclear_decoy, not nuclear_decoy, target, period)


def _layout(
    rng: np.random.Generator, size: tuple[int, int], mpp: float, plan: SlidePlan,
    lesion_range: tuple[float, float],
) -> tuple[np.ndarray, np.ndarray, list[np.ndarray], np.ndarray]:
    """Soft tissue mask, lesion mask and polygons at level 0 with the lesion share inside the target range."""
    width, height = size
    # small test slides get a finer grid, a thinner margin and smaller lesions, so the lesion always fits
    extent_um = min(width, height) * mpp
    coarse_um = min(COARSE_UM, extent_um / 96)
    margin_um = min(LESION_MARGIN_UM, extent_um / 24)
    step = coarse_um / mpp
    coarse = (max(8, math.ceil(height / step)), max(8, math.ceil(width / step)))
    tfield, tthr = tissue_field(rng, coarse)
    up = cv2.resize(tfield - tthr, size, interpolation=cv2.INTER_LINEAR)
    soft = np.clip(up / 0.04 + 0.5, 0, 1)
    tissue = up > 0
    inside_coarse = cv2.erode(
        (tfield > tthr).astype(np.uint8),
        cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * math.ceil(margin_um / coarse_um) + 1,) * 2),
    ).astype(bool)
    if inside_coarse.sum() < 16:
        raise RuntimeError(f"no room for a lesion in a {width}x{height} slide; use a larger synthetic.width/height")
    lfield = lesion_field(rng, inside_coarse, plan.period_um / coarse_um)
    values = np.sort(lfield[inside_coarse])
    n_tissue = int((tfield > tthr).sum())
    min_area = (min(60.0, extent_um / 10) / mpp) ** 2
    lo, hi = sorted(float(v) for v in lesion_range)
    target, best, best_err = plan.lesion_fraction, None, np.inf
    for _ in range(8):  # the coarse grid quantises the share: correct the target a few times
        k = int(np.clip(round(target * n_tissue), 1, len(values) - 1))
        polygons = lesion_polygons(lfield, inside_coarse, float(values[k]), size, min_area)
        lesion = rasterise(polygons, size) & tissue
        share = lesion.sum() / max(1, tissue.sum())
        err = abs(share - plan.lesion_fraction)
        if polygons and lo <= share <= hi and err < best_err:
            best, best_err = (soft, lesion, polygons, tissue), err
        if best is not None and err < 0.1 * plan.lesion_fraction:
            break
        target *= plan.lesion_fraction / max(share, 1e-3)
    if best is None:
        raise RuntimeError(
            f"could not place a lesion of {lo:.2f}-{hi:.2f} of the tissue in a {width}x{height} slide "
            f"(last try {share:.3f}); use a larger synthetic.width/height"
        )
    return best


def render_slide(
    rng: np.random.Generator, width: int, height: int, mpp: float, plan: SlidePlan,
    lesion_range: tuple[float, float] = (0.05, 0.25),
) -> SyntheticSlide:
    """Draw one slide at level 0 as stain densities, then convert to RGB with Beer-Lambert absorption."""
    size = (int(width), int(height))
    um = 1.0 / mpp  # pixels per micrometre
    soft, lesion, polygons, tissue = _layout(rng, size, mpp, plan, lesion_range)

    # lesion architecture: cells vs gaps, drawn in the lesion's bounding box only
    cells = np.zeros((height, width), bool)
    if polygons:
        allpts = np.concatenate(polygons)
        x0, y0 = np.maximum(allpts.min(0) - 2, 0)
        x1, y1 = np.minimum(allpts.max(0) + 3, [width, height])
        arch = architecture(rng, (int(y1 - y0), int(x1 - x0)), plan.period_um * um, plan.glandular)
        cells[y0:y1, x0:x1] = arch.astype(bool)
        cells &= lesion
    gaps = lesion & ~cells
    stroma = tissue & ~lesion

    # nuclei
    fibre_deg = float(rng.uniform(0, 180))
    nuc = np.zeros((height, width), np.uint8)
    spindle_pts = rng.uniform([0, 0], [width, height], (int(tissue.sum() / (20 * um) ** 2), 2))
    spindle_pts = select(spindle_pts, (stroma | gaps) & (soft > 0.5))
    draw_nuclei(nuc, spindle_nuclei(rng, spindle_pts, fibre_deg, um), rng)
    tissue_um2 = float(tissue.sum()) / um**2
    decoys = select(decoy_clusters(rng, stroma, tissue_um2, um), stroma)
    draw_nuclei(nuc, lesion_nuclei(rng, decoys, True, um), rng)
    if polygons:
        # regular cells pack denser, so both kinds put about the same haematoxylin into a low-resolution pixel:
        # the cellular cue is the nuclei's size, shape and texture, which needs 20x to see
        spacing = (13.0 if plan.atypical else 7.5) * um
        cell_erode = cv2.erode(cells.astype(np.uint8), np.ones((3, 3), np.uint8), iterations=max(1, int(1.5 * um)))
        pts = select(grid_points(rng, (int(x0), int(y0), int(x1), int(y1)), spacing), cell_erode.astype(bool))
        draw_nuclei(nuc, lesion_nuclei(rng, pts, plan.atypical, um), rng)

    # stain densities
    fibres = fibre_texture(rng, size, fibre_deg, um)
    grain = rng.standard_normal((height, width), dtype=np.float32)
    nucf = cv2.GaussianBlur(nuc, (0, 0), 0.6 * um).astype(np.float32) * (NUCLEUS_H_MAX / 255.0)
    nucf *= 1 + 0.22 * grain  # chromatin texture
    # python floats, not numpy float64 scalars: those would promote every float32 layer to float64 (NEP 50)
    e_scale, h_scale = float(rng.uniform(0.9, 1.1)), float(rng.uniform(0.9, 1.1))
    # lesion: blend cytoplasm and gap stain with an anti-aliased cell mask; stroma keeps its fibres
    cellf = np.zeros((height, width), np.float32)
    if polygons:
        box = cells[y0:y1, x0:x1].astype(np.float32)
        cellf[y0:y1, x0:x1] = cv2.GaussianBlur(box, (0, 0), 0.7 * um) * lesion[y0:y1, x0:x1]
    eos = np.where(lesion, 0.18 + 0.12 * cellf, 0.45 * (1 + 0.22 * fibres)).astype(np.float32)
    hem = np.where(lesion, 0.05 + 0.37 * cellf, 0.05).astype(np.float32)
    eos = e_scale * soft * eos * (1 - 0.5 * np.clip(nucf, 0, 1))
    hem = h_scale * (soft * hem + nucf)
    background_od = float(rng.uniform(0.045, 0.065))
    h_vec = HEMATOXYLIN_OD * rng.uniform(0.95, 1.05, 3).astype(np.float32)
    e_vec = EOSIN_OD * rng.uniform(0.95, 1.05, 3).astype(np.float32)
    rgb = np.empty((height, width, 3), np.uint8)
    for c in range(3):
        od = eos * float(e_vec[c]) + hem * float(h_vec[c]) + 0.012 * grain + background_od
        rgb[..., c] = np.clip(np.exp(-od) * 255.0, 0, 255).astype(np.uint8)

    share = float(lesion.sum() / max(1, tissue.sum()))
    info = {
        "label": CLASSES[int(plan.malignant)],
        "atypical_nuclei": plan.atypical,
        "architecture": "glandular" if plan.glandular else "labyrinth",
        "period_um": round(plan.period_um, 3),
        "lesion_fraction": round(share, 5),
        "tissue_fraction": round(float(tissue.mean()), 5),
        "mpp": mpp,
        "width": width,
        "height": height,
    }
    return SyntheticSlide(rgb, tissue, lesion, polygons, info)


def _slide_sizes(sizes: dict[str, Any]) -> dict[str, Any]:
    """The drawing parameters out of a `synthetic` config section (table-level keys are ignored)."""
    unknown = set(sizes) - set(SLIDE_KEYS) - set(TABLE_KEYS)
    if unknown:
        raise ConfigError(f"unknown synthetic setting(s) {sorted(unknown)}; known: {sorted(SLIDE_KEYS + TABLE_KEYS)}")
    out = {"width": 3072, "height": 2048, "tile_size": 256, "jpeg_quality": 85, "lesion_fraction": (0.05, 0.25),
           "mpp": 0.5}
    out.update({k: v for k, v in sizes.items() if k in SLIDE_KEYS})
    return out


def make_slide(slide: str, label: str | int | bool, seed: int, **sizes: Any) -> SyntheticSlide:
    """Render one slide in memory (no files): what write_synthetic_slide writes, for tests and benchmarks."""
    params = _slide_sizes(sizes)
    malignant = label == "malignant" if isinstance(label, str) else bool(label)
    if isinstance(label, str) and label not in CLASSES:
        raise ValueError(f"label must be one of {CLASSES}, got {label!r}")
    rng = slide_rng(seed, slide)
    plan = plan_slide(rng, malignant, params["lesion_fraction"])
    return render_slide(rng, int(params["width"]), int(params["height"]), float(params["mpp"]), plan,
                        tuple(params["lesion_fraction"]))


def lesion_geojson(slide: str, seed: int, polygons: list[np.ndarray], info: dict[str, Any]) -> dict[str, Any]:
    """A QuPath-style FeatureCollection: one `Tumor` annotation per polygon, level-0 pixel coordinates.

    Feature ids are UUIDs derived from (seed, slide, index), so they are stable across runs.
    """
    features = []
    for idx, poly in enumerate(polygons):
        ring = [[int(x), int(y)] for x, y in poly] + [[int(poly[0, 0]), int(poly[0, 1])]]
        features.append({
            "type": "Feature",
            "id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"msamil-synthetic/{seed}/{slide}/{idx}")),
            "geometry": {"type": "Polygon", "coordinates": [ring]},
            "properties": {
                "objectType": "annotation",
                "name": f"lesion {idx + 1}",
                "classification": {"name": "Tumor", "color": [200, 0, 0]},
                "isLocked": False,
            },
        })
    return {"type": "FeatureCollection", "features": features, "msamil": {"slide": slide, "seed": seed, **info}}


def write_synthetic_slide(
    svs_path: str | os.PathLike[str], geojson_path: str | os.PathLike[str], slide: str,
    label: str | int | bool, seed: int, **sizes: Any,
) -> dict[str, Any]:
    """Render a slide and write it as an Aperio SVS plus its lesion GeoJSON; return the slide's description.

    `sizes` are the `synthetic` config keys (width, height, tile_size, jpeg_quality, lesion_fraction) plus `mpp`.
    """
    params = _slide_sizes(sizes)
    syn = make_slide(slide, label, seed, **params)
    write_svs(svs_path, syn.rgb, mpp=float(params["mpp"]), tile_size=int(params["tile_size"]),
              jpeg_quality=int(params["jpeg_quality"]))
    write_json(geojson_path, lesion_geojson(slide, seed, syn.polygons, syn.info))
    log.info("%s: %s", slide, syn.info)
    return syn.info


def generate_synthetic(
    table_path: str | os.PathLike[str], slide: str, svs_path: str | os.PathLike[str],
    geojson_path: str | os.PathLike[str], seed: int, cfg_synthetic: dict[str, Any], mpp: float,
) -> dict[str, Any]:
    """Rule entry point: look the slide's label up in the raw table, then write the slide and its lesions."""
    table = pd.read_csv(table_path, sep="\t", dtype={"slide": str})
    rows = table.loc[table["slide"] == slide, "label"]
    if rows.empty:
        raise ConfigError(f"slide {slide!r} is not in {table_path}; check synthetic.n_slides")
    return write_synthetic_slide(svs_path, geojson_path, slide, str(rows.iloc[0]), seed, mpp=mpp,
                                 **{k: v for k, v in cfg_synthetic.items() if k in SLIDE_KEYS})


def render_preview(path: str | os.PathLike[str], syn: SyntheticSlide) -> None:
    """Save the level-0 image with lesion outlines (for eyeballing the generator; not used by the workflow)."""
    img = cv2.cvtColor(syn.rgb, cv2.COLOR_RGB2BGR)
    cv2.polylines(img, [p.astype(np.int32) for p in syn.polygons], True, (0, 200, 0), 3)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), img)
