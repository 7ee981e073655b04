"""Robustness evaluation: the attack engine with per-sample records, metrics with intervals, the
gradient-masking checks, localization, and the reports (tables, figures, HTML)."""
