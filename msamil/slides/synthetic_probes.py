"""Probes of what each scale sees of the synthetic cues (DESIGN.md section 9): the proof that the label needs both.

For one cue (`cellular`: atypical vs regular nuclei; `architectural`: rosettes vs meanders) lesion-only regions of
both kinds are rendered, with the other cue drawn at random, and written as real SVS files (JPEG tiles, pyramid).
Patches are cut at 20x, 10x and 5x exactly as the cache cuts them (`Slide.read_patch` on the cache grid) and
resized to the model's input exactly as the model does (`to_input`). Then, per scale, two probes are trained on
the patches of some regions and scored (patch-level ROC AUC) on the patches of the others:

* the demo backbone itself (a timm model with a one-logit head) trained on single-scale patches;
* a logistic regression on simple colour and texture statistics of the model input.

A cue is *visible* at a scale when a probe reaches AUC >= 0.9 there and *invisible* when both stay <= 0.6.
tests/test_synthetic_cues.py asserts the design on small probes; benchmarks/bench_cue_probes.py reports larger ones.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from msamil.config import SCALE_FACTOR, SCALES
from msamil.slides.slide import Slide
from msamil.slides.svs import write_svs_tiled
from msamil.slides.synthetic import GLAND_STEP_UM, SlidePlan, slide_rng
from msamil.slides.synthetic_draw import Stain
from msamil.slides.synthetic_scene import build_scene, lesion_only_layout

CUES = ("cellular", "architectural")
# region side (px at 20x) per cue: an architectural region must hold enough 5x patches (128 um each), since the
# arrangement spans hundreds of um
REGION_PX = {"cellular": 1024, "architectural": 2048}
DEMO_BACKBONE = {"backbone": "test_efficientnet", "backbone_kwargs": {"output_stride": 16}, "input_px": 32}


@dataclass
class ProbePatches:
    """Patches of one cue per scale: uint8 (n, P, P, 3), the cue's label (1 = atypical / rosettes), and the
    number of the region within its class each came from."""

    patches: dict[str, np.ndarray] = field(default_factory=dict)
    labels: dict[str, np.ndarray] = field(default_factory=dict)
    regions: dict[str, np.ndarray] = field(default_factory=dict)


def region_plan(cue: str, positive: bool, other: bool, step: float) -> SlidePlan:
    """The plan of one probe region: the probed cue set by `positive`, the other cue by `other`."""
    if cue == "cellular":
        return SlidePlan(positive, other, 1.0, step)
    if cue == "architectural":
        return SlidePlan(other, positive, 1.0, step)
    raise ValueError(f"cue must be one of {CUES}, got {cue!r}")


def probe_patches(cue: str, seed: int, n_regions: int, region_px: int | None = None, patch_px: int = 64,
                  mpp_20x: float = 0.5, per_region: int | None = None,
                  workdir: str | Path | None = None) -> ProbePatches:
    """`n_regions` regions per class, each `region_px` square (default: REGION_PX) at `mpp_20x` µm/px, cut into
    cache-grid patches.

    Regions come in matched pairs: region i of each class shares the nuisance (stain, gland step, the other cue,
    which alternates between pairs) and differs in the probed cue and in its own random geometry. Nuisance is then
    identical in both classes, not merely independent of the label, so a probe cannot mistake a few regions'
    stains for a cue. At most `per_region` patches per scale and region are kept (a seeded random subset).
    """
    region_px = region_px or REGION_PX[cue]
    out = ProbePatches()
    rows: dict[str, list[tuple[np.ndarray, int, int]]] = {s: [] for s in SCALES}
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        for label in (0, 1):
            for i in range(n_regions):
                pair = slide_rng(seed, f"probe_{cue}_pair_{i:03d}")
                stain, step = Stain.draw(pair), float(pair.uniform(*GLAND_STEP_UM))
                key = f"probe_{cue}_{label}_{i:03d}"
                rng = slide_rng(seed, key)
                plan = region_plan(cue, bool(label), i % 2 == 0, step)
                layout = lesion_only_layout(region_px, region_px, mpp_20x)
                scene = build_scene(rng, key, seed, region_px, region_px, mpp_20x, plan, (1.0, 1.0), layout, stain)
                path = Path(tmp) / f"{key}.svs"
                write_svs_tiled(path, region_px, region_px, scene.render, mpp=mpp_20x)
                region = i  # regions are numbered per class; (label, region) names one
                with Slide.open(path, key) as slide:
                    for scale in SCALES:
                        size = patch_px * SCALE_FACTOR[scale]
                        starts = np.arange(0, region_px - size + 1, size)
                        grid = [(x, y) for y in starts for x in starts]
                        if per_region is not None and len(grid) > per_region:
                            pick = np.sort(rng.choice(len(grid), per_region, replace=False))
                            grid = [grid[k] for k in pick]
                        for x, y in grid:
                            rows[scale].append((slide.read_patch(int(x), int(y), int(size), patch_px), label, region))
                path.unlink()
    for scale, items in rows.items():
        out.patches[scale] = np.stack([p for p, _, _ in items])
        out.labels[scale] = np.asarray([lab for _, lab, _ in items])
        out.regions[scale] = np.asarray([reg for _, _, reg in items])
    return out


def colour_texture_stats(x: Any) -> np.ndarray:
    """Per-channel mean, std, 5/25/50/75/95th percentiles, mean |gradient|, gradient energy, mean |Laplacian|
    and Laplacian std of model inputs (N, 3, H, W): what a simple colour/texture classifier sees."""
    import cv2

    arr = np.asarray(x, np.float32)
    feats = []
    for img in arr:
        f: list[float] = []
        for ch in img:
            gx, gy = np.diff(ch, axis=1), np.diff(ch, axis=0)
            lap = cv2.Laplacian(np.ascontiguousarray(ch), cv2.CV_32F)
            f += [ch.mean(), ch.std(), *np.percentile(ch, [5, 25, 50, 75, 95]),
                  np.abs(gx).mean() + np.abs(gy).mean(), (gx**2).mean() + (gy**2).mean(), np.abs(lap).mean(),
                  lap.std()]
        feats.append(f)
    return np.asarray(feats, np.float64)


def logistic_auc(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray) -> float:
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000, C=1.0))
    clf.fit(train_x, train_y)
    return float(roc_auc_score(test_y, clf.predict_proba(test_x)[:, 1]))


def backbone_auc(train_x: Any, train_y: np.ndarray, test_x: Any, test_y: np.ndarray, model_cfg: dict[str, Any],
                 epochs: int, seed: int, batch: int = 32, lr: float = 1e-3) -> float:
    """Train the demo backbone with a one-logit head on single-scale patches (random dihedral flips), score AUC."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny inputs: one thread is fastest, and a busy machine never oversubscribes
    try:
        return _train_and_score(train_x, train_y, test_x, test_y, model_cfg, epochs, seed, batch, lr)
    finally:
        torch.set_num_threads(threads)


def _train_and_score(train_x: Any, train_y: np.ndarray, test_x: Any, test_y: np.ndarray, model_cfg: dict[str, Any],
                     epochs: int, seed: int, batch: int, lr: float) -> float:
    import timm
    import torch
    from sklearn.metrics import roc_auc_score

    torch.manual_seed(seed)
    model = timm.create_model(model_cfg["backbone"], pretrained=False, num_classes=1,
                              **dict(model_cfg.get("backbone_kwargs") or {}))
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    gen = torch.Generator().manual_seed(seed)
    xs, ys = torch.as_tensor(train_x), torch.as_tensor(train_y, dtype=torch.float32)
    model.train()
    for _ in range(epochs):
        for idx in torch.randperm(len(xs), generator=gen).split(batch):
            xb = torch.rot90(xs[idx], int(torch.randint(0, 4, (1,), generator=gen)), (2, 3))
            if torch.rand(1, generator=gen) < 0.5:
                xb = xb.flip(3)
            loss = torch.nn.functional.binary_cross_entropy_with_logits(model(xb).squeeze(1), ys[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        scores = torch.cat([model(chunk).squeeze(1) for chunk in torch.as_tensor(test_x).split(256)]).numpy()
    return float(roc_auc_score(test_y, scores))


def run_probes(data: ProbePatches, model_cfg: dict[str, Any] | None = None, epochs: int = 12,
               seed: int = 0) -> list[dict[str, Any]]:
    """Both probes at every scale. Every third region of each class is held out for testing (so the other cue
    stays balanced in train and test); AUC is over the held-out regions' patches."""
    from msamil.models.backbone import to_input

    model_cfg = {**DEMO_BACKBONE, **(model_cfg or {})}
    results = []
    for scale in SCALES:
        labels, regions = data.labels[scale], data.regions[scale]
        test = (regions % 3) == 2
        x = to_input(data.patches[scale], int(model_cfg["input_px"])).numpy()
        stats = colour_texture_stats(x)
        lr = logistic_auc(stats[~test], labels[~test], stats[test], labels[test])
        cnn = backbone_auc(x[~test], labels[~test], x[test], labels[test], model_cfg, epochs, seed)
        common = {"scale": scale, "n_train": int((~test).sum()), "n_test": int(test.sum())}
        results += [{**common, "probe": "backbone", "auc": cnn}, {**common, "probe": "colour_texture_lr", "auc": lr}]
    return results
