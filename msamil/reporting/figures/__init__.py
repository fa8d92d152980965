"""Stage "reporting", figures: the paper's figures and per-slide QC sheets (rules/aggregate.smk).

Fig. 2 SFFM, Fig. 3a/3b, ROC, attention heatmaps, efficiency, and the QC sheets.

Every module draws with `style` so the figures share one colour-blind-safe palette, fonts and fixed sizes; each
public function writes a PNG (150 dpi) and a PDF of a size `style.figure_size` fixes in advance.
"""
