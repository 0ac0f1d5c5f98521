"""The Kafka runtime: the stages between Kafka and the core (readers, annotator, writer),
bounded channels, start planning, output transactions and tail reconciliation, the
instance claim, metrics. May import `unifeed.core`, `unifeed.kafka`,
`unifeed.checkpoint`; never `unifeed.cli`.

This is the public way to embed a Kafka run in another program: build `RuntimeOptions`,
then a `CombineRun` (or `MappingsRun`, or `MergeRun`), `start` it (metrics port, checkpoint, claim,
threads planned) and `run` it (returns 0 when it has finished, raises the run's
`UnifeedError` otherwise; `stop` from another thread ends it after a last commit)::

    from unifeed.kafka.clients import Target
    from unifeed.runtime import CombineRun, RuntimeOptions

    options = RuntimeOptions(bootstrap="127.0.0.1:9092", instance="uf-a", exit_at_end=True)
    run = CombineRun(options, control=Target("controlstream"),
                     surface=Target("surfacestream"), output=Target("unified"))
    run.start()
    run.run()

Modules, by job: `options` (RuntimeOptions), `state` (shared run state, the worker
thread), `reader` (a partition's reader, several partitions on one consumer) with its pure parts `resume` (the resume
skip), `endwatch` (end-of-log watch) and `marks` (restart marks), `stages` (the annotator's
and the writer's rounds), `opening` (the output side's start-up) with `startcheck` (the
start's refusals), `output` (the Committer: produce and commit) with its parts
`transactions` (the producer), `tail` (the output tail after a restart), `deadletters`
(dead letters, oversized records) and `positions` (checkpoint positions), `claim` (the
instance claim and its watcher), `health` (broker health), `seek` and `startup` (start
planning), `saved` (deriver snapshots, their saving and the state topic), `supervisor`
(the run loop every command shares), `combine`, `mappings` and `merge` (the runs),
`layout` (which partitions a feed is read from, their keys), `feedmerge` (a feed read
from several partitions: their merge into the feed's order), `partwatch` (partitions
added while running), `inbox` (bounded channels), `metrics` (Prometheus text and its
server), `runloop` (every stage of a `combine` or `merge` run in one thread, in turn).

A feed given as a `TopicSelection` (``kafka:TOPIC``: every partition) is read from each
of its partitions, each its own queue; a `Target` is that one partition.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from unifeed.runtime.combine import CombineRun
    from unifeed.runtime.mappings import MappingsRun
    from unifeed.runtime.merge import MergeRun
    from unifeed.runtime.options import RuntimeOptions

__all__ = ["CombineRun", "MappingsRun", "MergeRun", "RuntimeOptions"]

_HOMES = {
    "CombineRun": "unifeed.runtime.combine",
    "MappingsRun": "unifeed.runtime.mappings",
    "MergeRun": "unifeed.runtime.merge",
    "RuntimeOptions": "unifeed.runtime.options",
}


def __getattr__(name: str) -> Any:
    """The public names, imported on first use: `unifeed.runtime.metrics` alone (as the
    ingest command uses it) does not load the Kafka client."""
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'unifeed.runtime' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(home), name)
