"""One fold's trained MsaMIL-Net applied to new slides: the `predict_fold` job.

The model is rebuilt from the method's settings and loaded from the fold's best.pt (weights only); every slide is
read exactly as the trainer evaluates its test slides (the patches the fold's SFFM selection keeps, or all tissue
patches for `sffm: false`, in bags drawn by the same policy: msamil.training.inference.policy), so a prediction
on a new slide means what the fold's test predictions mean.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from msamil.config import method_settings
from msamil.errors import ConfigError
from msamil.models import build_model
from msamil.models.backbone import select_device
from msamil.predict import PREDICT_KINDS
from msamil.slides.outcomes import slide_caches
from msamil.training import checkpoint as ckpt
from msamil.training.data import SlideData
from msamil.training.inference import policy, predict_slide
from msamil.util.atomic import atomic_path, write_tsv


def predict_fold(config: dict[str, Any], dataset: str, method: str, fold: int, *, slides_tsv: str | Path,
                 best_pt: str | Path, selection: str | Path | None, out_predictions: str | Path,
                 out_attention: str | Path, threads: int | None = None,
                 resources: Mapping[str, Any] | None = None) -> pd.DataFrame:
    """Class probabilities (prob_<class>) and attention of every slide in `slides_tsv` under fold `fold`'s model."""
    if config["methods"][method]["kind"] not in PREDICT_KINDS:
        raise ConfigError(f"predict: method {method!r} is not of a kind predict applies ({PREDICT_KINDS})")
    settings = method_settings(config, method)
    # best.pt holds every weight: the pretrained ones the run started from are not needed (nor fetched) again
    settings["model"] = {**settings["model"], "pretrained": False, "pretrained_path": None}
    if threads:
        torch.set_num_threads(int(threads))
    device = select_device(config.get("device", "auto"), resources)
    blob = ckpt.load(best_pt)
    classes = list(blob.get("classes") or config["dataset_config"][dataset]["classes"])
    model = build_model(settings, len(classes), seed=0)
    model.load_state_dict(blob["model"])
    model.to(device).eval()
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    caches = slide_caches(slides_tsv)
    data = SlideData(list(caches.values()), selection if settings["sffm"] else None, settings["scales"])
    chunk = int(settings["train"].get("infer_chunk", 64))
    input_px = int(settings["model"]["input_px"])
    rows, outs = [], []
    for slide in caches:
        with data.open(slide) as reader:
            out = predict_slide(model, reader, device, input_px, chunk, slide,
                                **policy(settings["train"], int(config["seed"]), int(fold), slide))
        probs = torch.softmax(torch.as_tensor(out["logits"]), dim=0).numpy()
        rows.append({"slide": slide, "fold": int(fold), **{f"prob_{c}": float(p) for c, p in zip(classes, probs,
                                                                                                strict=True)}})
        outs.append({"slide": slide, **out})
    frame = pd.DataFrame(rows, columns=["slide", "fold", *[f"prob_{c}" for c in classes]])
    write_tsv(out_predictions, frame, float_format="%.6f")
    _write_attention(out_attention, outs, settings["scales"])
    return frame


def _write_attention(path: str | Path, outs: list[dict[str, Any]], scales: list[str]) -> None:
    """The trainer's attention.h5 layout: a group per slide with coords, scale_idx, index, attention, logits."""
    import h5py

    with atomic_path(path) as tmp, h5py.File(tmp, "w") as h5:
        h5.attrs["scales"] = json.dumps(list(scales))
        for o in outs:
            g = h5.create_group(o["slide"])
            for key in ("coords", "scale_idx", "index", "attention"):
                g.create_dataset(key, data=np.asarray(o[key]))
            g.attrs["logits"] = o["logits"]
        h5.attrs["complete"] = True
