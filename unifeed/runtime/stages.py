"""The core stages as threads: the annotator and the writer."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, cast

from unifeed.core.combine import Emitted
from unifeed.core.records import (
    CONTROLSTREAM,
    MAPPINGSTREAM,
    SURFACESTREAM,
    Mapping,
)
from unifeed.core.stages import (
    Accepted,
    AnnotateStage,
    DeadLetter,
    MergeStage,
    WriterStage,
)
from unifeed.runtime.inbox import Batch, Inbox
from unifeed.runtime.limits import IDLE_S, STAGE_CAPACITY
from unifeed.runtime.options import RuntimeOptions
from unifeed.runtime.output import Committer
from unifeed.runtime.state import RunState, Worker

log = logging.getLogger("unifeed")

# An inbox's lanes carry different record types; each lane's type is named where it is
# taken (cast), as the lane's producer made it.
#: The writer's lanes: controlstream's accepted messages, surfacestream's annotated output.
WriterInbox = Inbox[Accepted | Emitted]
#: The annotator's lanes: mappings (derived or read), surfacestream's accepted messages.
AnnotatorInbox = Inbox[Mapping | Accepted]


class AnnotatorThread(Worker):
    def __init__(
        self,
        state: RunState,
        inbox: AnnotatorInbox,
        writer_inbox: WriterInbox,
        options: RuntimeOptions,
    ) -> None:
        super().__init__("annotator", state)
        self.inbox = inbox
        self.writer_inbox = writer_inbox
        self.stage = AnnotateStage(**_stage_options(options))
        self.surface_caught_up = False
        self._sent_marker: int | None = None
        self._sent_caught_up = False

    def work(self) -> None:
        stage = self.stage
        c = stage.combiner
        closed_sent = False
        while not self.state.stop.is_set():
            lanes = [lane for lane in (MAPPINGSTREAM, SURFACESTREAM) if c.room(lane) > 0]
            dead: list[DeadLetter] = []
            for lane, batch in self.inbox.take(lanes, IDLE_S):
                dead.extend(batch.dead)
                if lane == MAPPINGSTREAM:
                    stage.push_mappings(cast("list[Mapping]", batch.records))
                    if batch.marker is not None:
                        c.advance(MAPPINGSTREAM, batch.marker)
                    c.caught_up(MAPPINGSTREAM, batch.caught_up)
                    if batch.closed:
                        c.close(MAPPINGSTREAM)
                else:
                    stage.push_surface(cast("list[Accepted]", batch.records))
                    if batch.records or batch.caught_up:
                        self.surface_caught_up = batch.caught_up
                    c.caught_up(SURFACESTREAM, batch.caught_up)
                    if batch.closed:
                        c.close(SURFACESTREAM)
            out = stage.drain()
            if stage.dead:
                dead.extend(stage.dead)
                stage.dead.clear()
            marker = stage.progress()
            finished = stage.finished()
            caught_up = self.surface_caught_up and c.queued(SURFACESTREAM) == 0
            if (
                out
                or dead
                or marker != self._sent_marker
                or finished
                or caught_up != self._sent_caught_up
            ):
                sent: Batch[Accepted | Emitted] = Batch(out, dead, marker, caught_up, finished)
                if not self.writer_inbox.put_blocking(SURFACESTREAM, sent):
                    return
                self._sent_marker = marker
                self._sent_caught_up = caught_up
                self.state.counters["annotated"] = stage.annotator.annotated
                self.state.counters["unmapped"] = stage.annotator.unmapped
                if finished:
                    closed_sent = True
            if closed_sent:
                # The annotated feed has ended; keep emptying the inbox so that the
                # control reader (which also feeds mappings here) never blocks on it.
                while not self.state.stop.is_set():
                    self.inbox.take([MAPPINGSTREAM, SURFACESTREAM], IDLE_S)
                return


def _stage_options(options: RuntimeOptions) -> dict[str, Any]:
    """The options a stage thread gives its core stage."""
    return {
        "realtime_threshold_ms": options.realtime_threshold_ms,
        "clock": options.clock,
        "strict_order": options.strict_order,
        "capacity": STAGE_CAPACITY,
    }


def end_round(committer: Committer, state: RunState, ending: bool) -> bool:
    """A writing thread's end of a round: when ``ending`` (returns True), the open
    transaction is committed, unless the run failed: then it is aborted, not committed,
    and the restart redoes it from the last checkpoint; else a commit that is due."""
    if ending:
        if state.failure is None:
            committer.commit(reopen=False)
        return True
    if committer.due():
        committer.commit()
    return False


#: How a writer queues one lane's records into its stage.
Push = Callable[[list[Any]], bool]


class WriterThread(Worker):
    """The merge of the output's feeds (a `MergeStage`, one lane each), written and
    committed by the `Committer`.

    By default the unified feed's (`WriterStage`: controlstream's accepted messages and
    the annotated surfacestream); `unifeed merge` gives its own stage over its inputs
    (``stage`` and ``pushes``, how each lane's records go into it).
    """

    def __init__(
        self,
        state: RunState,
        inbox: WriterInbox,
        committer: Committer,
        options: RuntimeOptions,
        stage: MergeStage | None = None,
        pushes: dict[str, Push] | None = None,
    ) -> None:
        super().__init__("writer", state)
        self.inbox = inbox
        self.committer = committer
        if stage is None or pushes is None:
            unified = WriterStage(**_stage_options(options))
            stage = unified
            pushes = {
                CONTROLSTREAM: cast("Push", unified.push_control),
                SURFACESTREAM: cast("Push", unified.push_annotated),
            }
        self.stage = stage
        self.pushes = pushes
        self.finished = False

    def work(self) -> None:
        stage = self.stage
        c = stage.combiner
        committer = self.committer
        pushes = self.pushes
        try:
            while True:
                stopping = self.state.stop.is_set()
                lanes = [lane for lane in pushes if c.room(lane) > 0]
                for lane, batch in self.inbox.take(lanes, 0 if stopping else IDLE_S):
                    committer.write_dead(batch.dead)
                    pushes[lane](batch.records)
                    if batch.marker is not None:
                        c.advance(lane, batch.marker)
                    c.caught_up(lane, batch.caught_up)
                    if batch.closed:
                        c.close(lane)
                out = stage.drain()
                if out:
                    committer.write(out)
                    self.state.counters["late"] = c.late
                if c.last_mode is not None:
                    self.state.mode = c.last_mode.value
                committer.stop_if_over_dead_letter_limit()
                if c.exhausted():
                    committer.commit(reopen=False)
                    self.finished = True
                    return
                if end_round(committer, self.state, stopping):
                    return
        finally:
            committer.close()
