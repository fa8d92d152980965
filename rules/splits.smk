# rules for the splits stage (see docs/CONTRACT.md)
