"""The paper's claims, checked on the results of a finished default run (`make demo`).

Training every method on every fold takes ~13 minutes on 2 cores, too long for the CI suite, so these tests read
an existing results tree: `make demo && MSAMIL_RESULTS=results .venv/bin/pytest tests/test_demo_claims.py`.
Without MSAMIL_RESULTS they are skipped.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from msamil.training.metrics import classification_metrics, prob_columns

RESULTS = os.environ.get("MSAMIL_RESULTS")
pytestmark = pytest.mark.skipif(not RESULTS, reason="set MSAMIL_RESULTS to a finished run's results/ directory")


def fold_aucs(method: str, dataset: str = "synthetic") -> list[float]:
    runs = sorted(Path(RESULTS, dataset, "runs", method).glob("fold*/predictions.tsv"))
    assert runs, f"no predictions for {method}"
    aucs = []
    for path in runs:
        frame = pd.read_csv(path, sep="\t")
        probs = frame[prob_columns(frame)].to_numpy()
        aucs.append(classification_metrics(frame["label"].to_numpy(), probs)["auc"])
    return aucs


def test_multi_scale_beats_20x_only():
    full, single = fold_aucs("msamil"), fold_aucs("msamil_20x_only")
    print(f"msamil {np.mean(full):.3f} ± {np.std(full, ddof=1):.3f}; "
          f"20x only {np.mean(single):.3f} ± {np.std(single, ddof=1):.3f}")
    assert np.mean(full) > np.mean(single)


def test_end_to_end_beats_two_stage_abmil():
    assert np.mean(fold_aucs("msamil")) > np.mean(fold_aucs("abmil"))
