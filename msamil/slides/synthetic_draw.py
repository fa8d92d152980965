"""Pixels of a synthetic slide, rendered tile by tile from its `Scene` (so any slide size fits in bounded memory).

A tile is drawn on a window with a margin (`MARGIN_UM`), from inputs that do not depend on where tiles start:
nuclei and glands are lists in slide coordinates, white noise comes in fixed blocks seeded by their position
(`BlockNoise`), and the tissue field is sampled with one resize's convention. Neighbouring tiles therefore agree
on every pixel, whatever the tile size.

The cellular cue is chromatin striation. Atypical and regular nuclei share size, shape, stain and density; an
atypical nucleus also carries stripes of +-STRIATION_GREY grey levels with a period of exactly 2 µm, along x or y,
on the slide's pixel grid. A 2 µm period is what the demo model's 20x input (1 µm/px) just resolves: its
antialiased 2x resize of a 0.5 µm/px patch turns the stripes into a one-pixel alternation. Any area average over
a full period cancels them, and that is what the other scales are made of: the cache reads 10x by averaging 2x2
level-0 pixels (the stripes become a 1 µm alternation) which the model's 2x resize averages away, and 5x from a
level averaged over 4x4 pixels, a whole period. At 10x and 5x an atypical nucleus therefore looks like a regular one
except for what its edges (the stripes fade in over STRIATION_EDGE_UM), the patch borders of the resize and JPEG let
through. The stripes are added in transmitted intensity, so a nucleus keeps its mean colour in every low-pass view.
"""

from __future__ import annotations

import math
import zlib
from collections import OrderedDict
from dataclasses import dataclass

import cv2
import numpy as np

from msamil.slides.synthetic_layout import GLAND_LUMEN_UM, GLAND_OUTER_UM, Layout, rasterise

# Optical densities per unit stain (R, G, B): haematoxylin is blue-purple, eosin pink. Colour = 255 * exp(-OD).
HEMATOXYLIN_OD = np.array([0.55, 0.77, 0.28], np.float32)
EOSIN_OD = np.array([0.10, 0.85, 0.40], np.float32)
NUCLEUS_H = 1.6  # haematoxylin density of a nucleus at full value (255)
EPITHELIUM_H = 0.32  # haematoxylin density of gland epithelium (cytoplasm between the nuclei)
STRIATION_PERIOD_UM = 2.0  # chromatin striation of atypical nuclei (see the module docstring)
STRIATION_GREY = 32.0  # its amplitude in grey levels of transmitted intensity (0-255), scaled by the slide's stain
STRIATION_RGB = np.array([0.9, 1.0, 0.8], np.float32)  # per-channel weight of the stripes
STRIATION_EDGE_UM = 1.0  # the stripes fade in over this distance (Gaussian) at a nucleus' edge
MARGIN_UM = 16.0  # context drawn around a tile: the largest nucleus, gland or filter reach
NOISE_BLOCK = 256  # side of the white-noise blocks, level-0 px
POLY_VERTICES = 12
SHIFT = 2  # sub-pixel bits of the drawing coordinates


class BlockNoise:
    """Standard normal noise over the whole slide plane, generated in fixed blocks seeded by (key, block x, y):
    any window reads the same values whatever tile it belongs to."""

    def __init__(self, key: tuple[int, ...], cache_blocks: int = 64) -> None:
        self.key = key
        self.cache: OrderedDict[tuple[int, int], np.ndarray] = OrderedDict()
        self.cache_blocks = cache_blocks

    def _block(self, bx: int, by: int) -> np.ndarray:
        block = self.cache.get((bx, by))
        if block is None:
            rng = np.random.default_rng([*self.key, bx & 0xFFFFFFFF, by & 0xFFFFFFFF])
            block = rng.standard_normal((NOISE_BLOCK, NOISE_BLOCK), dtype=np.float32)
            self.cache[(bx, by)] = block
            if len(self.cache) > self.cache_blocks:
                self.cache.popitem(last=False)
        else:
            self.cache.move_to_end((bx, by))
        return block

    def window(self, x0: int, y0: int, w: int, h: int) -> np.ndarray:
        out = np.empty((h, w), np.float32)
        b = NOISE_BLOCK
        for by in range(y0 // b, (y0 + h - 1) // b + 1):
            for bx in range(x0 // b, (x0 + w - 1) // b + 1):
                ys, ye = max(y0, by * b), min(y0 + h, (by + 1) * b)
                xs, xe = max(x0, bx * b), min(x0 + w, (bx + 1) * b)
                out[ys - y0:ye - y0, xs - x0:xe - x0] = self._block(bx, by)[ys - by * b:ye - by * b,
                                                                            xs - bx * b:xe - bx * b]
        return out


def noise_key(seed: int, slide: str, stream: str) -> tuple[int, int, int]:
    return int(seed), zlib.crc32(slide.encode()), zlib.crc32(stream.encode())


@dataclass
class Nuclei:
    """Nuclei of one kind in slide coordinates (level-0 px), sorted by y for fast window queries."""

    x: np.ndarray
    y: np.ndarray
    a: np.ndarray  # semi-axes
    b: np.ndarray
    angle: np.ndarray  # radians
    value: np.ndarray  # 0-255 stain strength
    wobble: np.ndarray  # (n, POLY_VERTICES) radial factors: irregular outlines
    striated: np.ndarray  # bool: atypical (striated chromatin)
    stripes_y: np.ndarray  # bool: stripes vary along y (horizontal stripes) rather than along x

    @classmethod
    def make(cls, rng: np.random.Generator, pts: np.ndarray, a: np.ndarray, b: np.ndarray, angle: np.ndarray,
             value: np.ndarray, wobble_range: tuple[float, float], striated: bool) -> Nuclei:
        n = len(pts)
        wob = rng.uniform(*wobble_range, (n, POLY_VERTICES)).astype(np.float32)
        wob = (wob + np.roll(wob, 1, axis=1)) / 2  # irregular but not spiky
        stripes_y = rng.random(n) < 0.5
        striated_ = np.full(n, bool(striated))
        order = np.argsort(pts[:, 1], kind="stable") if n else np.zeros(0, np.int64)
        return cls(pts[order, 0], pts[order, 1], a[order], b[order], angle[order], value[order], wob[order],
                   striated_[order], stripes_y[order])

    @classmethod
    def concat(cls, parts: list[Nuclei]) -> Nuclei:
        fields = {k: np.concatenate([getattr(p, k) for p in parts]) for k in cls.__dataclass_fields__}
        order = np.argsort(fields["y"], kind="stable")
        return cls(**{k: v[order] for k, v in fields.items()})

    def __len__(self) -> int:
        return len(self.x)

    def window(self, x0: float, y0: float, x1: float, y1: float) -> np.ndarray:
        """Indices of nuclei whose centre lies in [x0, x1) x [y0, y1)."""
        lo, hi = np.searchsorted(self.y, [y0, y1])
        idx = np.arange(lo, hi)
        return idx[(self.x[idx] >= x0) & (self.x[idx] < x1)]

    def outlines(self, idx: np.ndarray, ox: float, oy: float) -> list[np.ndarray]:
        """Polygons (fixed-point, SHIFT bits) of nuclei `idx` in a window whose origin is (ox, oy)."""
        t = np.linspace(0, 2 * np.pi, POLY_VERTICES, endpoint=False)
        w = self.wobble[idx]
        px = self.a[idx, None] * w * np.cos(t)
        py = self.b[idx, None] * w * np.sin(t)
        ca, sa = np.cos(self.angle[idx])[:, None], np.sin(self.angle[idx])[:, None]
        xs = self.x[idx, None] - ox + px * ca - py * sa
        ys = self.y[idx, None] - oy + px * sa + py * ca
        pts = np.rint(np.stack([xs, ys], axis=-1) * (1 << SHIFT)).astype(np.int32)
        return list(pts)


def draw_nuclei(canvas: np.ndarray, nuclei: Nuclei, idx: np.ndarray, ox: float, oy: float,
                value: int | None = None) -> None:
    """Fill nuclei `idx` into a uint8 canvas (anti-aliased), grouped by stain value (8 levels) for speed."""
    if not len(idx):
        return
    polys = nuclei.outlines(idx, ox, oy)
    levels = np.clip((nuclei.value[idx] // 8) * 8 + 4, 0, 255).astype(int) if value is None else np.full(len(idx), value)
    for level in np.unique(levels):
        cv2.fillPoly(canvas, [polys[k] for k in np.flatnonzero(levels == level)], int(level), cv2.LINE_AA, SHIFT)


def draw_glands(cells: np.ndarray, lumens: np.ndarray, glands: np.ndarray, radii: np.ndarray,
                ox: float, oy: float, um: float) -> None:
    """Gland epithelium (annulus) into `cells` and lumen discs into `lumens`, both uint8 255 = inside."""
    f = 1 << SHIFT
    for (x, y), (r_out, r_lumen) in zip(glands, radii, strict=True):
        centre = (int(round((x - ox) * f)), int(round((y - oy) * f)))
        cv2.circle(cells, centre, int(round(r_out * um * f)), 255, -1, cv2.LINE_AA, SHIFT)
        cv2.circle(lumens, centre, int(round(r_lumen * um * f)), 255, -1, cv2.LINE_AA, SHIFT)


def fibre_kernel(angle_deg: float, um: float) -> np.ndarray:
    """A 6 µm line along the fibre direction, blurred by 0.5 µm, scaled to unit L2 norm (unit output variance)."""
    length = max(3, int(6 * um) | 1) + 2 * max(1, int(math.ceil(1.5 * um)))
    kernel = np.zeros((length, length), np.float32)
    c, r = length // 2, max(1, int(6 * um) // 2)
    dx, dy = math.cos(math.radians(angle_deg)), math.sin(math.radians(angle_deg))
    cv2.line(kernel, (int(round(c - dx * r)), int(round(c - dy * r))), (int(round(c + dx * r)), int(round(c + dy * r))),
             1.0, 1)
    kernel = cv2.GaussianBlur(kernel, (0, 0), 0.5 * um)
    return (kernel / np.sqrt((kernel**2).sum())).astype(np.float32)


def gland_radii(rng: np.random.Generator, n: int) -> np.ndarray:
    return np.column_stack([rng.uniform(*GLAND_OUTER_UM, n), rng.uniform(*GLAND_LUMEN_UM, n)])


@dataclass
class Stain:
    """Per-slide stain variation (independent of the label): strengths, stain vectors, glass background."""

    e_scale: float
    h_scale: float
    background_od: float
    h_vec: np.ndarray
    e_vec: np.ndarray

    @classmethod
    def draw(cls, rng: np.random.Generator) -> Stain:
        return cls(float(rng.uniform(0.9, 1.1)), float(rng.uniform(0.9, 1.1)), float(rng.uniform(0.045, 0.065)),
                   (HEMATOXYLIN_OD * rng.uniform(0.95, 1.05, 3)).astype(np.float32),
                   (EOSIN_OD * rng.uniform(0.95, 1.05, 3)).astype(np.float32))


@dataclass
class Scene:
    """Everything a slide shows, in slide coordinates; `render` turns any window of it into RGB pixels."""

    layout: Layout
    glands: np.ndarray  # (n, 2) centres, level-0 px, sorted by y
    radii: np.ndarray  # (n, 2) outer and lumen radius, µm
    nuclei: Nuclei
    fibre_deg: float
    stain: Stain
    noise: dict[str, BlockNoise]
    fibre_kernel: np.ndarray  # unit-L2 smear kernel of the stroma fibres

    @property
    def um(self) -> float:
        return 1.0 / self.layout.mpp

    def masks(self, x0: int, y0: int, w: int, h: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(soft tissue 0..1, tissue, lesion) over a window."""
        field = self.layout.tissue_window(x0, y0, w, h)
        tissue = field > 0
        lesion = rasterise(self.layout.polygons, (w, h), (x0, y0)) & tissue
        return np.clip(field / 0.04 + 0.5, 0, 1), tissue, lesion

    def render(self, x0: int, y0: int, w: int, h: int) -> np.ndarray:
        """RGB uint8 (h, w, 3) of the level-0 window at (x0, y0)."""
        m = int(math.ceil(MARGIN_UM * self.um))
        ex, ey, ew, eh = x0 - m, y0 - m, w + 2 * m, h + 2 * m
        soft, tissue, lesion = self.masks(ex, ey, ew, eh)
        grain = self.noise["grain"].window(ex, ey, ew, eh)
        eos = hem = np.zeros((eh, ew), np.float32)
        stripes = None
        if tissue.any():  # glass needs no stain
            eos, hem, stripes = self._stains(soft, tissue, lesion, grain, ex, ey, ew, eh)
        st = self.stain
        intensity = np.empty((eh, ew, 3), np.float32)
        for c in range(3):
            od = eos * float(st.e_vec[c]) + hem * float(st.h_vec[c]) + 0.012 * grain + st.background_od
            intensity[..., c] = np.exp(-od) * 255.0
        if stripes is not None:
            intensity += stripes[..., None] * ((st.h_scale * STRIATION_GREY) * STRIATION_RGB)
        rgb = np.clip(np.rint(intensity), 0, 255).astype(np.uint8)
        return np.ascontiguousarray(rgb[m:m + h, m:m + w])

    def _stains(self, soft: np.ndarray, tissue: np.ndarray, lesion: np.ndarray, grain: np.ndarray, ex: int, ey: int,
                ew: int, eh: int) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """Eosin and haematoxylin densities of a window with tissue, and the striation (None if no atypical
        nucleus is near)."""
        um, st, m = self.um, self.stain, int(math.ceil(MARGIN_UM * self.um))
        stroma = tissue & ~lesion
        cellf = lumenf = np.zeros((eh, ew), np.float32)
        if lesion.any():
            cells, lumens = np.zeros((eh, ew), np.uint8), np.zeros((eh, ew), np.uint8)
            lo, hi = np.searchsorted(self.glands[:, 1], [ey - m, ey + eh + m]) if len(self.glands) else (0, 0)
            sel = np.arange(lo, hi)
            sel = sel[(self.glands[sel, 0] >= ex - m) & (self.glands[sel, 0] < ex + ew + m)]
            draw_glands(cells, lumens, self.glands[sel], self.radii[sel], ex, ey, um)
            cellf = cv2.GaussianBlur(cells, (0, 0), 0.7 * um).astype(np.float32) / 255 * lesion
            lumenf = cv2.GaussianBlur(lumens, (0, 0), 0.5 * um).astype(np.float32) / 255 * lesion

        idx = self.nuclei.window(ex - m, ey - m, ex + ew + m, ey + eh + m)
        nuc = np.zeros((eh, ew), np.uint8)
        draw_nuclei(nuc, self.nuclei, idx, ex, ey)
        nucf = cv2.GaussianBlur(nuc, (0, 0), 0.5 * um).astype(np.float32) * (NUCLEUS_H / 255.0)
        nucf *= (1 + 0.15 * grain) * soft

        fibres = self._fibres(ex, ey, ew, eh) if stroma.any() else np.zeros((eh, ew), np.float32)
        # lesion: pale lesion stroma, purple gland epithelium, clear lumens; stroma: pink fibres
        eos = np.where(lesion, 0.32 + 0.05 * cellf - 0.25 * lumenf,
                       0.45 * (1 + 0.22 * fibres) * stroma).astype(np.float32)
        hem = np.where(lesion, 0.10 + EPITHELIUM_H * cellf - 0.08 * lumenf, 0.05 * stroma).astype(np.float32)
        eos = st.e_scale * soft * eos * (1 - 0.5 * np.clip(nucf, 0, 1))
        hem = st.h_scale * (soft * hem + nucf)
        striated = idx[self.nuclei.striated[idx]]
        return eos, hem, self._striation(striated, ex, ey, ew, eh) if len(striated) else None

    def _striation(self, idx: np.ndarray, ex: int, ey: int, ew: int, eh: int) -> np.ndarray:
        """+-1 stripes of period STRIATION_PERIOD_UM on the slide's pixel grid inside nuclei `idx` (along x or y
        per nucleus), faded in at their edges."""
        masks = []
        for along_y in (False, True):
            canvas = np.zeros((eh, ew), np.uint8)
            draw_nuclei(canvas, self.nuclei, idx[self.nuclei.stripes_y[idx] == along_y], ex, ey, value=255)
            masks.append(cv2.GaussianBlur(canvas, (0, 0), STRIATION_EDGE_UM * self.um).astype(np.float32) / 255)
        mpp = self.layout.mpp
        phase_x = ((np.arange(ex, ex + ew) + 0.5) * mpp) % STRIATION_PERIOD_UM < STRIATION_PERIOD_UM / 2
        phase_y = ((np.arange(ey, ey + eh) + 0.5) * mpp) % STRIATION_PERIOD_UM < STRIATION_PERIOD_UM / 2
        sx = np.where(phase_x, 1.0, -1.0).astype(np.float32)[None, :]
        sy = np.where(phase_y, 1.0, -1.0).astype(np.float32)[:, None]
        return masks[0] * sx + masks[1] * sy

    def _fibres(self, ex: int, ey: int, ew: int, eh: int) -> np.ndarray:
        """Streaky stroma texture (collagen fibres), unit variance: white noise through `fibre_kernel`."""
        noise = self.noise["fibres"].window(ex, ey, ew, eh)
        return cv2.filter2D(noise, -1, self.fibre_kernel, borderType=cv2.BORDER_CONSTANT)

    def render_masks(self) -> tuple[np.ndarray, np.ndarray]:
        """Whole-slide tissue and lesion masks (small slides only: tests and previews)."""
        _, tissue, lesion = self.masks(0, 0, self.layout.width, self.layout.height)
        return tissue, lesion
