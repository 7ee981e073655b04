"""Robustness under attack: the protocol's budgets, the engine that runs attacks per batch with per-sample
records, the figures with intervals, the gradient-masking checks, and the evaluation end to end."""
