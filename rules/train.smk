# rules for the train stage (see docs/CONTRACT.md)
