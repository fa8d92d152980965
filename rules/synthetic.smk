# rules for the synthetic stage (see docs/CONTRACT.md)
