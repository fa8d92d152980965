"""Stage "slides": slide I/O with exact MPP, synthetic slides, inspection (rules/synthetic.smk, inspect.smk)."""
