"""Benchmarks (run as scripts; see each file)."""
