"""Benchmarks and the chaos run: each prints its figures against a baseline from the same run."""
