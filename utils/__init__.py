"""Shared helpers: atomic file writes, seeding, logging."""
