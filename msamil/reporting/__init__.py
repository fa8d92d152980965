"""Stage "reporting": tables, figures, aggregate plan and README demo block (rules/aggregate.smk)."""
