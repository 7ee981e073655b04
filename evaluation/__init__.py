"""Evaluation, by concern: ``robustness`` (attacks, per-sample records, checks), ``corruption``,
``localization``, ``reporting`` (tables, figures, HTML) and ``stats`` (intervals and tests)."""
