# rules for the aggregate stage (see docs/CONTRACT.md)
