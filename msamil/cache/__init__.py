"""Stage "cache": the aligned 20x/10x/5x patch cache, its grid and bag reader (rules/cache.smk)."""
