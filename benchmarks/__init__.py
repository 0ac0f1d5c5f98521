"""Benchmarks of unifeed (pytest-benchmark), kept apart from ``tests/``.

They are run explicitly (``pytest benchmarks --benchmark-only``); a plain ``pytest`` from
the repository root collects ``tests/`` only. See ``benchmarks/README.md`` for the method.
"""
