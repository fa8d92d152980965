# rules for the datasets stage (see docs/CONTRACT.md)
