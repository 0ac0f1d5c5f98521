"""``unifeed ingest``: real ADS-B data in, as controlstream and surfacestream.

What this package holds:

* the pure part, free of I/O and threads, testable alone: `decode_response` (readsb
  JSON, the aggregator API form and a receiver's ``aircraft.json``), `SbsDecoder` (SBS-1
  BaseStation lines into the same aircraft states), `Tracker` (flights from tracks,
  phases, emergencies, de-duplication, ``power_on`` / ``power_off`` links),
  `AccessList` (privacy lists) and `NearestAirport` (facility codes from
  ``airportsdata``);
* the I/O around it, in ``_sources`` (HTTP polling, file re-reading, replay of recorded
  responses, an SBS socket, each in its own thread) and ``_run`` (the loop that feeds the
  tracker and writes files or Kafka topics, status line, metrics, signals).

What it may import: the core record and access helpers (``unifeed.core.records``,
``unifeed.core.errors``), the existing file and Kafka output helpers (``unifeed.core.unify``'s
``open_output``, ``unifeed.kafka.clients``) and ``unifeed.runtime.metrics``; never the command line
(``unifeed.cli.main*``), which imports it. ``import unifeed`` does not import this package.

>>> from unifeed.ingest import Tracker, decode_response
>>> tracker = Tracker(nearest_airport=lambda lat, lon: "EGLL")
>>> body = b'{"ac":[{"hex":"400a0b","flight":"BAW12 ","alt_baro":3100,"baro_rate":1800,' \\
...        b'"lat":51.5,"lon":-0.6,"seen_pos":0.2}],"now":1700000000000}'
>>> batch = tracker.process(decode_response(body), pitr=1_700_000_000_400)
>>> [line[:30] for line in batch.control]
[b'{"type":"flightplan","pitr":17', b'{"type":"position","pitr":1700', b'{"type":"keepalive","pitr":170']
>>> b'"phase":"climb"' in batch.control[1]
True
"""

from ._access import AccessList as AccessList
from ._access import BadAccessLine as BadAccessLine
from ._airports import NearestAirport as NearestAirport
from ._airports import load_airports as load_airports
from ._readsb import Aircraft as Aircraft
from ._readsb import BadResponse as BadResponse
from ._readsb import Snapshot as Snapshot
from ._readsb import decode_response as decode_response
from ._sbs import SbsDecoder as SbsDecoder
from ._tracker import IngestBatch as IngestBatch
from ._tracker import Tracker as Tracker
from ._tracker import TrackerConfig as TrackerConfig

__all__ = [
    "AccessList",
    "Aircraft",
    "BadAccessLine",
    "BadResponse",
    "IngestBatch",
    "NearestAirport",
    "SbsDecoder",
    "Snapshot",
    "Tracker",
    "TrackerConfig",
    "decode_response",
    "load_airports",
]
