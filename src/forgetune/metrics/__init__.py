"""Metrics; each declares whether higher is better."""
