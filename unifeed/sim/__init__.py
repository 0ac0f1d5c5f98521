"""Deterministic synthetic traffic (``unifeed simulate``): controlstream and
surfacestream for tests, benchmarks and the demo (`unifeed.sim.traffic`, played through
the airports, fleets and timetable of `unifeed.sim.world`), and the same traffic as ADS-B
aggregator responses for `unifeed ingest` (`unifeed.sim.adsb`).

May import: `unifeed.core`.
"""
