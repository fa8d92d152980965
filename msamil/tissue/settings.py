"""Which tissue settings a dataset uses: the code defaults, then `tissue:` in config, then
`dataset_config.<ds>.tissue`, key by key (DESIGN.md section 5).

One cohort of faint IHC biopsies and one of dense H&E resections may need different settings; an override names
only what differs. The inspect checkpoint and the tissue rule get the same merged settings, so a slide is excluded
as "no tissue" exactly when its tissue mask would be empty.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from msamil.errors import ConfigError

#: the tissue settings every stage uses when config gives none (config.yaml mirrors them)
TISSUE_DEFAULTS: dict[str, Any] = {
    "seg_mpp": 8.0,
    "smooth_um": 8.0,
    "threshold": 0.01,
    "seed_threshold": 0.04,
    "close_um": 64.0,
    "min_fragment_area_um2": 5000.0,
    "fragment_area_ratio": 0.01,
    "min_tissue_area_um2": 50000.0,
    "min_hole_area_um2": 20000.0,
    "edge_fraction": 0.35,
}


def merge_tissue(*sections: Mapping[str, Any] | None, where: str = "tissue") -> dict[str, Any]:
    """TISSUE_DEFAULTS overridden by each section in turn; an unknown key is a typo, so it is an error."""
    merged = dict(TISSUE_DEFAULTS)
    for section in sections:
        section = section or {}
        unknown = sorted(set(section) - set(TISSUE_DEFAULTS))
        if unknown:
            raise ConfigError(f"{where}: unknown tissue setting(s) {unknown}; known: {sorted(TISSUE_DEFAULTS)}")
        merged.update(section)
    return merged


def tissue_settings(config: Mapping[str, Any], dataset: str) -> dict[str, Any]:
    """The merged tissue settings of `dataset` (a name under `dataset_config`; an unknown name gets the global
    settings, so prediction sets and tests can ask too)."""
    ds_cfg = (config.get("dataset_config") or {}).get(dataset) or {}
    return merge_tissue(config.get("tissue"), ds_cfg.get("tissue"),
                        where=f"tissue / dataset_config.{dataset}.tissue")


__all__ = ["TISSUE_DEFAULTS", "merge_tissue", "tissue_settings"]
