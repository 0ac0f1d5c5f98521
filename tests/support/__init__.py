"""Helpers shared by the tests: broker tools, reference models, golden scenarios.

Test modules import from here, never from one another.
"""
