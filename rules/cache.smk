# rules for the cache stage (see docs/CONTRACT.md)
