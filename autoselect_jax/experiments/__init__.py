"""Experiments built on the training system and the demo (docs/experiments.md)."""
