"""Stage "lesion": lesion masks, per-fold U-Net++ and SFFM patch selection (rules/lesion.smk)."""
