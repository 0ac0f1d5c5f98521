"""unifeed: one unified flight-tracking feed from controlstream and surfacestream.

A short tour (it runs as a doctest):

>>> from unifeed import Combiner, Feed
>>> c = Combiner([Feed("controlstream", required_realtime=True, required_catchup=True),
...               Feed("surfacestream", required_realtime=False, required_catchup=True)],
...              realtime_threshold_ms=30_000, clock=lambda: 1_700_000_100_000)
>>> c.push("controlstream", 1_700_000_000_000, b"c1")
True
>>> c.push("surfacestream", 1_700_000_000_500, b"s1")
True
>>> [e.item for e in c.drain()]   # catch-up: s1 waits for controlstream to pass it
[b'c1']
>>> c.advance("controlstream", 1_700_000_001_000)   # a keepalive
>>> [(e.feed, e.item) for e in c.drain()]
[('surfacestream', b's1')]

The whole pipeline over complete JSON-lines inputs:

>>> from unifeed import unify_lines
>>> control = [b'{"type":"flightplan","pitr":1,"id":"F1","ident":"UAL1","access":"restricted"}',
...            b'{"type":"power_on","pitr":2,"id":"F1","surface_id":"S9","facility":"KSFO"}']
>>> surface = [b'{"type":"ground_position","pitr":3,"surface_id":"S9","facility":"KSFO",'
...            b'"clock":3,"lat":37.6,"lon":-122.4}']
>>> out, run = unify_lines(control, surface)
>>> print(out[-1].decode())
{"type":"ground_position","pitr":3,"surface_id":"S9","facility":"KSFO","clock":3,"lat":37.6,"lon":-122.4,"id":"F1","access":"restricted"}

Any feeds whose messages carry an integer ``pitr``, merged (ties by input order):

>>> from unifeed import merge_lines
>>> out, stats = merge_lines({"radar": [b'{"pitr":1,"r":1}', b'{"pitr":3,"r":2}'],
...                           "adsb": [b'{"pitr":1,"a":1}', b'{"type":"keepalive","pitr":2}']})
>>> out
[b'{"pitr":1,"r":1}', b'{"pitr":1,"a":1}', b'{"pitr":3,"r":2}']
>>> stats.output, stats.feed("adsb").keepalives
(3, 1)
"""

from unifeed.core.annotate import Annotator as Annotator
from unifeed.core.combine import Combiner as Combiner
from unifeed.core.combine import CombinerStats as CombinerStats
from unifeed.core.combine import Emitted as Emitted
from unifeed.core.combine import Feed as Feed
from unifeed.core.combine import Mode as Mode
from unifeed.core.errors import BadRecordError as BadRecordError
from unifeed.core.errors import BrokerUnreachableError as BrokerUnreachableError
from unifeed.core.errors import CheckpointError as CheckpointError
from unifeed.core.errors import ConfigError as ConfigError
from unifeed.core.errors import DeadLetterLimitError as DeadLetterLimitError
from unifeed.core.errors import FeedOrderError as FeedOrderError
from unifeed.core.errors import InstanceFencedError as InstanceFencedError
from unifeed.core.errors import KafkaRuntimeError as KafkaRuntimeError
from unifeed.core.errors import PartitionChangeError as PartitionChangeError
from unifeed.core.errors import StartRefusedError as StartRefusedError
from unifeed.core.errors import UnifeedError as UnifeedError
from unifeed.core.mapping import MappingDeriver as MappingDeriver
from unifeed.core.merge import Merger as Merger
from unifeed.core.merge import MergeStats as MergeStats
from unifeed.core.merge import merge_lines as merge_lines
from unifeed.core.stages import DeadLetter as DeadLetter
from unifeed.core.unify import Unifier as Unifier
from unifeed.core.unify import unify_lines as unify_lines

__all__ = [
    "Annotator",
    "BadRecordError",
    "BrokerUnreachableError",
    "CheckpointError",
    "Combiner",
    "CombinerStats",
    "ConfigError",
    "DeadLetter",
    "DeadLetterLimitError",
    "Emitted",
    "Feed",
    "FeedOrderError",
    "InstanceFencedError",
    "KafkaRuntimeError",
    "MappingDeriver",
    "MergeStats",
    "Merger",
    "Mode",
    "PartitionChangeError",
    "StartRefusedError",
    "UnifeedError",
    "Unifier",
    "merge_lines",
    "unify_lines",
]

__all__ += ["__version__"]


def __getattr__(name: str) -> str:
    # The version comes from the installed package's metadata, read on first use:
    # importlib.metadata is heavy (it loads threading), and `import unifeed` stays light.
    if name != "__version__":
        raise AttributeError(f"module 'unifeed' has no attribute {name!r}")
    from importlib.metadata import PackageNotFoundError, version

    try:
        found = version("unifeed")
    except PackageNotFoundError:  # a checkout run without installing it (bin/unifeed)
        found = "0+unknown"
    globals()["__version__"] = found
    return found
