"""Prediction on new slides with a trained dataset/method (DESIGN.md section 9b; rules/predict.smk).

`apply` runs one fold's MsaMIL-Net on the new slides (torch); `report` gathers the folds into predictions.tsv and
draws one attention heatmap per slide (no torch: it runs in the report environment). This module imports neither,
so the Snakefile can check the `predict:` section with it.
"""

from collections.abc import Mapping
from typing import Any

from msamil.errors import ConfigError

#: Method kinds `predict:` can apply: MsaMIL-Net and its ablations (one checkpoint holds the whole model).
PREDICT_KINDS = ("msamil",)


def check_predict(config: Mapping[str, Any], name: str) -> None:
    """ConfigError unless prediction set `name` names a configured dataset and a method of a kind predict applies
    (schema validation cannot see across sections, so this runs before any job)."""
    spec = config["predict"][name]
    where = f"predict.{name}"
    if spec["dataset"] not in config["dataset_config"]:
        raise ConfigError(f"{where}.dataset: {spec['dataset']!r} is not a dataset under dataset_config (known: "
                          f"{sorted(config['dataset_config'])}); name the dataset whose trained models to apply")
    method = spec["method"]
    if method not in config["methods"]:
        raise ConfigError(f"{where}.method: {method!r} is not a method under methods (known: "
                          f"{sorted(config['methods'])})")
    kind = config["methods"][method]["kind"]
    if kind not in PREDICT_KINDS:
        raise ConfigError(f"{where}.method: {method!r} is of kind {kind!r}; predict applies methods of kind "
                          f"{', '.join(PREDICT_KINDS)} (MsaMIL-Net and its ablations), not the baselines")
