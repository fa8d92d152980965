"""Shared helpers of every stage: atomic writes, checksums, job logging (used by all rules/*.smk scripts)."""
