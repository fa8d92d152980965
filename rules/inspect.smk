# rules for the inspect stage (see docs/CONTRACT.md)
