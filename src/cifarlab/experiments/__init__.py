"""Looking at runs: run tables, HTML reports, comparisons, sweeps, and the figures and pages they share."""
