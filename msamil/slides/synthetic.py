"""The embedded synthetic dataset (DESIGN.md section 9): H&E-like Aperio slides whose label needs two scales.

Every slide shows tissue on a bright background: pink stroma with spindle nuclei and one or two lesions (exported
as QuPath GeoJSON polygons). A lesion is glands (purple epithelium around a clear lumen) in a pale lesion stroma
with interstitial cells, dark enough at 8 µm/px for the lesion U-Net to find. Two independent cues decide the label,
each built so that only its own scale can see it (the demo model sees 20x at 1 µm/px, 10x at 2 and 5x at 4):

* cellular (20x): *atypical* nuclei have striated chromatin (stripes of exactly 2 µm period); regular nuclei share
  their size, shape, stain and density but are evenly stained. Any average over 2 µm cancels the stripes, and the
  10x and 5x views are such averages, so there both kinds look the same (msamil.slides.synthetic_draw).
* architectural (5x): glands lie on chains with a fixed step (26-30 µm) and fixed turn (45°). In *rosettes* the
  turns all go one way and each chain closes into a ring of eight glands about 100 µm across; in *meanders* they
  go either way at random. Any three consecutive glands are congruent in both, and a 32 µm field never holds more
  (msamil.slides.synthetic_layout); only a field of ~100 µm or more shows whether chains close.

Malignant = atypical nuclei AND rosettes. A benign slide carries exactly one of the cues (a decoy): atypical
nuclei in meanders, or regular nuclei in rosettes. Every slide also has small clusters of atypical nuclei in normal
stroma, so a model that looks at all tissue (no lesion selection) sees 20x decoys everywhere. Lesion size, stain
and the decoys are drawn the same way for every label. A 20x-only or a 5x-only model can therefore reach at most
AUC 0.75 (it tells apart only the benign slides that lack its cue), while a model that combines both scales can
reach 1. tests/test_synthetic_cues.py proves each cue's visibility per scale with probes.

Everything is drawn in physical units (µm) and converted with the slide's MPP, so a 40x variant (mpp 0.25)
shows the same structures at twice the pixel size. Slides are rendered and written tile by tile, so memory stays
bounded for scan-sized slides. Output is deterministic: the random stream is seeded from (seed, crc32(slide id)),
noise from (seed, slide, position), and the JPEG/TIFF encoders are deterministic.
"""

from __future__ import annotations

import logging
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
from msamil.slides.svs import write_svs_tiled
from msamil.slides.synthetic_draw import Scene
from msamil.slides.synthetic_scene import build_scene
from msamil.util.atomic import write_json, write_tsv

log = logging.getLogger("msamil.slides.synthetic")

CLASSES = ("benign", "malignant")
# Keys of the config's `synthetic` section that concern the table, not the drawing of one slide.
TABLE_KEYS = ("n_slides", "n_patients", "positive_fraction")
SLIDE_KEYS = ("width", "height", "tile_size", "jpeg_quality", "lesion_fraction", "mpp")

GLAND_STEP_UM = (26.0, 30.0)  # distance between consecutive glands of a chain (per slide)
RENDER_BLOCK = 1024  # side of the blocks a whole slide is rendered in (bounds the float temporaries)
GENERATOR_VERSION = 2  # bump when the same seed draws different slides


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
    """What a slide shows, decided before drawing: the label is `atypical and glandular` (rosettes)."""

    atypical: bool
    glandular: bool
    lesion_fraction: float  # target share of the tissue
    gland_step_um: float

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
    """Malignant slides get both cues; a benign one gets one of them at random (the decoy). Everything else is
    drawn before the label matters, so it is independent of it."""
    lo, hi = sorted(float(v) for v in lesion_fraction)
    margin = 0.15 * (hi - lo)  # rasterising polygons moves the share a little; stay clear of the bounds
    target = float(rng.uniform(lo + margin, hi - margin))
    step = float(rng.uniform(*GLAND_STEP_UM))
    nuclear_decoy = bool(rng.random() < 0.5)
    if malignant:
        return SlidePlan(True, True, target, step)
    return SlidePlan(nuclear_decoy, not nuclear_decoy, target, step)


def slide_scene(slide: str, label: str | int | bool, seed: int, **sizes: Any) -> tuple[Scene, SlidePlan]:
    """The scene of one slide (nothing rendered yet) and its plan."""
    params = _slide_sizes(sizes)
    malignant = label == "malignant" if isinstance(label, str) else bool(label)
    if isinstance(label, str) and label not in CLASSES:
        raise ValueError(f"label must be one of {CLASSES}, got {label!r}")
    rng = slide_rng(seed, slide)
    plan = plan_slide(rng, malignant, params["lesion_fraction"])
    scene = build_scene(rng, slide, seed, int(params["width"]), int(params["height"]), float(params["mpp"]), plan,
                        tuple(params["lesion_fraction"]))
    return scene, plan


def slide_info(scene: Scene, plan: SlidePlan) -> dict[str, Any]:
    lay = scene.layout
    return {
        "label": CLASSES[int(plan.malignant)],
        "atypical_nuclei": plan.atypical,
        "architecture": "rosettes" if plan.glandular else "meanders",
        "gland_step_um": round(plan.gland_step_um, 3),
        "glands": int(len(scene.glands)),
        "lesion_fraction": round(lay.lesion_share, 5),
        "tissue_fraction": round(lay.tissue_fraction, 5),
        "mpp": lay.mpp,
        "width": lay.width,
        "height": lay.height,
        "generator_version": GENERATOR_VERSION,
    }


def render_full(scene: Scene) -> np.ndarray:
    """The whole slide at level 0 (for small slides: tests, probes, previews), rendered block by block."""
    lay = scene.layout
    rgb = np.empty((lay.height, lay.width, 3), np.uint8)
    for y in range(0, lay.height, RENDER_BLOCK):
        for x in range(0, lay.width, RENDER_BLOCK):
            w, h = min(RENDER_BLOCK, lay.width - x), min(RENDER_BLOCK, lay.height - y)
            rgb[y:y + h, x:x + w] = scene.render(x, y, w, h)
    return rgb


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
    scene, plan = slide_scene(slide, label, seed, **sizes)
    tissue, lesion = scene.render_masks()
    return SyntheticSlide(render_full(scene), tissue, lesion, scene.layout.polygons, slide_info(scene, plan))


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
    scene, plan = slide_scene(slide, label, seed, **params)
    info = slide_info(scene, plan)
    write_svs_tiled(svs_path, scene.layout.width, scene.layout.height, scene.render, mpp=float(params["mpp"]),
                    tile_size=int(params["tile_size"]), jpeg_quality=int(params["jpeg_quality"]))
    write_json(geojson_path, lesion_geojson(slide, seed, scene.layout.polygons, info))
    log.info("%s: %s", slide, info)
    return info


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
