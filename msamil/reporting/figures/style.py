"""One style for every figure: Okabe-Ito colours (colour-blind safe), a fixed colour per method, fixed sizes.

Sizes are multiples of half an inch so that at 150 dpi the PNG size in pixels is an exact integer that tests
(and the report layout) can rely on.
"""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # headless: cluster nodes and CI have no display

from collections.abc import Sequence  # noqa: E402
from pathlib import Path  # noqa: E402

import matplotlib.pyplot as plt  # noqa: E402
import seaborn as sns  # noqa: E402

from msamil.util.atomic import atomic_path  # noqa: E402

DPI = 150
# Okabe & Ito (2008), the palette recommended for colour-vision deficiencies.
OKABE_ITO = {
    "black": "#000000", "orange": "#E69F00", "sky": "#56B4E9", "green": "#009E73",
    "yellow": "#F0E442", "blue": "#0072B2", "vermillion": "#D55E00", "purple": "#CC79A7", "grey": "#999999",
}
# Fixed per method across all figures, so a reader tracks one colour from ROC to efficiency plot.
METHOD_COLORS = {
    "msamil": OKABE_ITO["vermillion"],
    "abmil": OKABE_ITO["blue"],
    "dino_abmil": OKABE_ITO["green"],
    "icmil_abmil": OKABE_ITO["purple"],
    "msamil_20x_only": OKABE_ITO["orange"],
    "msamil_no_sffm": OKABE_ITO["sky"],
    "msamil_no_mhe": OKABE_ITO["black"],
    "msamil_gated_pool": OKABE_ITO["grey"],
    "msamil_frozen": OKABE_ITO["yellow"],
    # Okabe-Ito has nine colours; two more from Paul Tol's colour-blind-safe "muted" scheme (wine, teal)
    "msamil_10x_only": "#882255",
    "msamil_5x_only": "#44AA99",
}
_SPARE = [OKABE_ITO[k] for k in ("blue", "orange", "green", "purple", "sky", "black", "vermillion", "grey")]
SCALE_COLORS = {"20x": OKABE_ITO["vermillion"], "10x": OKABE_ITO["blue"], "5x": OKABE_ITO["green"]}
HEATMAP_CMAP = "viridis"  # perceptually uniform and colour-blind safe
PROB_CMAP = "magma"

# name -> (width, height) in inches as a function of n (rows or panels; see each figure's docstring).
_SIZES = {
    "fig2_sffm": lambda n: (13.5, 2.5 * n + 0.5),
    "fig3a_unetpp_iou": lambda n: (4.0 * n + 0.5, 3.5),
    "fig3b_dino_vs_e2e": lambda n: (7.0, 3.0 * n + 0.5),
    "roc": lambda n: (10.0, 4.5),
    "attention": lambda n: (11.0, 2.5 * n + 0.5),
    "efficiency": lambda n: (11.0, 3.5 * n + 0.5),
    "qc": lambda n: (7.0, 3.0),
}


def figure_size(name: str, n: int = 1) -> tuple[float, float]:
    """The figure's size in inches; `n` is its number of rows/panels (at least 1)."""
    return _SIZES[name](max(int(n), 1))


def figure_px(name: str, n: int = 1) -> tuple[int, int]:
    """The PNG's size in pixels (width, height) at `DPI`, what tests check."""
    w, h = figure_size(name, n)
    return round(w * DPI), round(h * DPI)


def method_color(method: str, known: Sequence[str] = ()) -> str:
    """The method's fixed colour; unknown methods get a spare colour by their position in `known`."""
    if method in METHOD_COLORS:
        return METHOD_COLORS[method]
    others = [m for m in known if m not in METHOD_COLORS]
    idx = others.index(method) if method in others else sum(map(ord, method))
    return _SPARE[idx % len(_SPARE)]


def apply_style() -> None:
    """Seaborn's paper context on a white grid with the Okabe-Ito cycle; idempotent, called by every figure."""
    sns.set_theme(context="paper", style="whitegrid", palette=list(OKABE_ITO.values()), font_scale=1.1)
    plt.rcParams.update({
        "figure.dpi": DPI, "savefig.dpi": DPI, "axes.titlesize": 10, "axes.labelsize": 9, "legend.fontsize": 8,
        "xtick.labelsize": 8, "ytick.labelsize": 8, "axes.titleweight": "bold", "pdf.fonttype": 42,
        "image.interpolation": "nearest",
    })


def new_figure(name: str, n: int = 1, nrows: int = 1, ncols: int = 1, **kwargs):
    """A constrained-layout figure of the fixed size with a 2-D array of axes."""
    apply_style()
    fig, axes = plt.subplots(nrows, ncols, figsize=figure_size(name, n), layout="constrained", squeeze=False,
                             **kwargs)
    return fig, axes


def save_figure(fig, png: str | Path, pdf: str | Path | None = None) -> None:
    """Write PNG (at `DPI`, no tight bbox so the size stays fixed) and PDF atomically, then free the figure."""
    try:
        with atomic_path(png) as tmp:
            fig.savefig(tmp, dpi=DPI, format="png")
        if pdf is not None:
            with atomic_path(pdf) as tmp:
                fig.savefig(tmp, format="pdf")
    finally:
        plt.close(fig)


def empty_panel(ax, text: str) -> None:
    """A panel that says why it is empty (a missing method or run) instead of failing the whole figure."""
    ax.set_axis_off()
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, fontsize=9, color="0.4", wrap=True)
