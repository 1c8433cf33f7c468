"""Reward models, the shared reward service, and per-axis normalisation (SPEC.md §4.1)."""
