"""Robustness to common corruptions: the visual and audio corruptions, and their evaluation."""
