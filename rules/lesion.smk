# rules for the lesion stage (see docs/CONTRACT.md)
