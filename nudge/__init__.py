"""Nudge: e-commerce email flows as Python code, run on Temporal."""
