"""The paper's claims, checked on the results of a finished run through paired intervals, never through means.

Training every method on every fold is too long for the CI suite, so these tests read an existing results tree:
`make demo && MSAMIL_RESULTS=results .venv/bin/pytest tests/test_demo_claims.py -rA` (-rA prints each claim's
interval and verdict; set MSAMIL_CLAIMS_DATASET for a dataset other than `synthetic`). Without MSAMIL_RESULTS they
are skipped.

A claim "MsaMIL-Net beats X" holds when, in `results/tables/comparisons.tsv`, the paired stratified-bootstrap
95 % interval of AUC(MsaMIL-Net) - AUC(X) on the same slides lies above 0 and both Holm-adjusted p-values
(bootstrap and DeLong) are below 0.05, the table's `better` verdict. A claim the data do not support fails with
its numbers.
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
import pytest

from msamil.reporting.comparisons import ALPHA

RESULTS = os.environ.get("MSAMIL_RESULTS")
DATASET = os.environ.get("MSAMIL_CLAIMS_DATASET", "synthetic")
pytestmark = pytest.mark.skipif(not RESULTS, reason="set MSAMIL_RESULTS to a finished run's results/ directory")

# method compared with MsaMIL-Net -> the paper's claim that MsaMIL-Net does better than it
CLAIMS = {
    "msamil_20x_only": "multi-scale beats 20x only",
    "msamil_10x_only": "multi-scale beats 10x only",
    "msamil_5x_only": "multi-scale beats 5x only",
    "abmil": "end to end beats two-stage ABMIL",
    "dino_abmil": "end to end beats DINO + ABMIL (two-stage)",
    "icmil_abmil": "MsaMIL-Net beats ICMIL",
}


@pytest.fixture(scope="module")
def comparisons() -> pd.DataFrame:
    table = Path(RESULTS, "tables", "comparisons.tsv")
    assert table.exists(), f"{table} missing: run `snakemake {table}` (or `make demo`) first"
    predictions = list(Path(RESULTS, DATASET, "runs").glob("*/fold*/predictions.tsv"))
    assert predictions, f"no predictions under {Path(RESULTS, DATASET, 'runs')}"
    newer = [str(p) for p in predictions if p.stat().st_mtime > table.stat().st_mtime]
    assert not newer, f"{table} is older than {len(newer)} predictions (e.g. {newer[0]}): rerun `snakemake {table}`"
    frame = pd.read_csv(table, sep="\t")
    return frame[frame["dataset"] == DATASET].set_index("method")


def describe(claim: str, row: pd.Series, holds: bool) -> str:
    return (f"{DATASET}: {claim}: ΔAUC = AUC(MsaMIL-Net) - AUC({row.name}) = {row.delta_auc:+.3f}, 95 % CI "
            f"[{row.ci_low:+.3f}, {row.ci_high:+.3f}] on {row.n_slides} slides ({row.auc_reference:.3f} vs "
            f"{row.auc_method:.3f}); Holm-adjusted p = {row.p_boot_holm:.4f} (bootstrap), "
            f"{row.p_delong_holm:.4f} (DeLong) -> {'HOLDS' if holds else 'NOT SUPPORTED by these data'}")


@pytest.mark.parametrize("method", list(CLAIMS))
def test_claim(comparisons, method):
    claim = CLAIMS[method]
    assert method in comparisons.index, (f"{claim}: no comparison of msamil with {method} on {DATASET} in "
                                         "comparisons.tsv (is it in config.yaml `methods:` and did it run?)")
    row = comparisons.loc[method]
    holds = bool(row.ci_low > 0 and row.p_boot_holm < ALPHA and row.p_delong_holm < ALPHA)
    text = describe(claim, row, holds)
    print(text)
    assert (row.verdict == "better") == holds, f"the table's verdict {row.verdict!r} disagrees: {text}"
    assert holds, text
