"""Checkpoint positions (`Positions`): how far each input feed has been written, as the
next checkpoint records it, with each feed's dead-letter mark, restart offset and source."""

from __future__ import annotations

from collections.abc import Mapping
from operator import attrgetter
from typing import Any, Final

import msgspec

from unifeed.checkpoint.store import FeedCheckpoint
from unifeed.core.combine import Emitted
from unifeed.kafka.clients import Target
from unifeed.runtime.layout import lowest_position
from unifeed.runtime.marks import RestartMarks

_FEED: Final = attrgetter("feed")

#: Per input feed key: its reader's restart marks and how far before the feeds' lowest
#: position a restart must read it (the lookback that rebuilds state), or None: from the
#: feed's own position.
MarksByFeed = Mapping[str, tuple[RestartMarks, int | None]]


class Positions:
    """Per feed key, the `FeedCheckpoint` the next checkpoint records: ``(pitr, skip)``
    of the last message written (`advance`), or as the caller says (`update`).

    ``feeds`` are the keys with positions of their own, ``inputs`` every input (each
    checkpoint names where it is read from), ``marks`` the restart marks of the feeds
    that have readers.

    >>> from unifeed.core.combine import Emitted
    >>> book = Positions(("c", "s"), {}, {})
    >>> book.advance([Emitted("c", 5, b""), Emitted("s", 6, b""), Emitted("c", 7, b""),
    ...               Emitted("c", 7, b"")])
    >>> book.current["c"].skip, book.current["s"].pitr
    (2, 6)
    >>> book.advance([Emitted("c", 7, b"")])     # a third message at 7
    >>> book.current["c"].skip
    3
    """

    def __init__(
        self,
        feeds: tuple[str, ...],
        inputs: Mapping[str, Target],
        marks: MarksByFeed,
        current: Mapping[str, FeedCheckpoint] | None = None,
    ) -> None:
        self.feeds = feeds
        self.inputs = inputs
        self.marks = marks
        self.current: dict[str, FeedCheckpoint] = dict(current or {})

    def advance(self, items: list[Emitted]) -> None:
        """Per feed: the last pitr written and how many of its messages had it (one
        backward scan that stops as soon as the last run of every feed in ``items`` has
        ended: once those seen so far have, whether any other feed is among the rest is
        asked once, in C, so that a feed absent from the batch (an idle partition) does
        not cost a scan of all of it)."""
        runs: dict[str, list[Any]] = {}  # feed -> [pitr, count, ended]
        open_runs = 0
        present: set[str] | None = None  # the feeds in ``items``, once asked
        last = len(items) - 1
        for back, e in enumerate(reversed(items)):
            run = runs.get(e.feed)
            if run is None:
                runs[e.feed] = [e.pitr, 1, False]
                open_runs += 1
            elif not run[2]:
                if e.pitr == run[0]:
                    run[1] += 1
                else:
                    run[2] = True
                    open_runs -= 1
                    if open_runs == 0:
                        if len(runs) == len(self.feeds):
                            break
                        if present is None:
                            present = set(map(_FEED, items[: last - back]))
                        if present <= runs.keys():
                            break
        positions = self.current
        for feed, (pitr, count, ended) in runs.items():
            if not ended:
                prev = positions.get(feed)
                if prev is not None and prev.pitr == pitr:
                    count += prev.skip
            prev_dead = positions[feed].dead_offset if feed in positions else None
            positions[feed] = FeedCheckpoint(pitr=pitr, skip=count, dead_offset=prev_dead)

    def checkpoints(
        self, dead_offsets: Mapping[str, int], *, restart_offsets: bool = True
    ) -> dict[str, FeedCheckpoint]:
        """The positions a checkpoint records now: each with the highest input offset of
        its dead letters (``dead_offsets``), its restart offset from the marks (unless
        ``restart_offsets`` is False), and its source."""
        out: dict[str, FeedCheckpoint] = {}
        current = self.current
        for f in self.feeds:
            pos = current.get(f)
            if pos is None:
                continue
            dead = dead_offsets.get(f)
            if dead is not None and (pos.dead_offset is None or dead > pos.dead_offset):
                pos = FeedCheckpoint(pitr=pos.pitr, skip=pos.skip, dead_offset=dead)
                current[f] = pos
            out[f] = pos
        # A feed read without a position of its own (an external mappingstream) keeps only
        # its dead-letter mark, so that a restart does not write its dead letters again.
        for f, dead in dead_offsets.items():
            prev = current.get(f)
            if f not in out and (prev is None or dead > (prev.dead_offset or -1)):
                current[f] = FeedCheckpoint(pitr=0, skip=0, dead_offset=dead)
        for f, pos in current.items():
            if f not in out:
                out[f] = pos
        marks = self.marks
        if restart_offsets and marks and all(f in out for f in marks):
            lowest = lowest_position(out, marks)
            for f, (feed_marks, lookback) in marks.items():
                pos = out[f]
                offset = feed_marks.offset_for(pos.pitr if lookback is None else lowest - lookback)
                if offset != pos.offset:
                    out[f] = current[f] = FeedCheckpoint(
                        pitr=pos.pitr, skip=pos.skip, dead_offset=pos.dead_offset, offset=offset
                    )
        # Each feed names its input, so that a start with other inputs is refused (an
        # external mappingstream too, with no position of its own).
        for f, target in self.inputs.items():
            source = f"{target.topic}:{target.partition}"
            pos = out.get(f) or FeedCheckpoint(pitr=0, skip=0)
            if pos.source != source:
                out[f] = msgspec.structs.replace(pos, source=source)
        return out
