"""Stage "tissue": tissue masks at a fixed physical resolution, contours and overlays (rules/tissue.smk)."""
