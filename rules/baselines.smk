# rules for the baselines stage (see docs/CONTRACT.md)
