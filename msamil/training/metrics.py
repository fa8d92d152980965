"""Slide-level classification metrics shared by every method, so tables compare like with like."""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score, roc_auc_score


def classification_metrics(labels: np.ndarray, probs: np.ndarray) -> dict[str, float]:
    """ACC, balanced ACC, macro-F1 and AUC (binary) or macro one-vs-rest AUC (multi-class).

    `labels` are class indices (n,), `probs` class probabilities (n, C). AUC is NaN when the test set holds a
    single class, rather than an exception, so one degenerate fold does not sink a run.
    """
    labels = np.asarray(labels, dtype=int)
    probs = np.asarray(probs, dtype=float)
    n_classes = probs.shape[1]
    preds = probs.argmax(axis=1)
    out = {
        "acc": float(accuracy_score(labels, preds)),
        "balanced_acc": float(balanced_accuracy_score(labels, preds)),
        "macro_f1": float(f1_score(labels, preds, average="macro", labels=list(range(n_classes)), zero_division=0)),
        "n": int(len(labels)),
    }
    present = np.unique(labels)
    if len(present) < 2:
        out["auc"] = float("nan")
    elif n_classes == 2:
        out["auc"] = float(roc_auc_score(labels, probs[:, 1]))
    else:
        # macro one-vs-rest over the classes present in this fold
        aucs = [roc_auc_score(labels == c, probs[:, c]) for c in present]
        out["auc"] = float(np.mean(aucs))
    return out


def prob_columns(frame: pd.DataFrame) -> list[str]:
    """prob_0 .. prob_{C-1} in class order (a lexical sort would put prob_10 before prob_2)."""
    cols = [c for c in frame.columns if c.startswith("prob_") and c[5:].isdigit()]
    return sorted((c for c in cols if frame[c].notna().any()), key=lambda c: int(c[5:]))
