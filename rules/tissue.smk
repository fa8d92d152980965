# rules for the tissue stage (see docs/CONTRACT.md)
