"""Deterministic synthetic traffic (``unifeed simulate``): controlstream and
surfacestream for tests, benchmarks and the demo.

May import: `unifeed.core`.
"""
