"""The core stages as threads: the annotator and the writer."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any, cast

from unifeed.core.combine import Emitted, Mode
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
from unifeed.runtime.limits import STAGE_CAPACITY
from unifeed.runtime.options import RuntimeOptions
from unifeed.runtime.output import Committer
from unifeed.runtime.state import RunState
from unifeed.runtime.transactions import FLUSH_TIMEOUT_S

log = logging.getLogger("unifeed")

# An inbox's lanes carry different record types; each lane's type is named where it is
# taken (cast), as the lane's producer made it.
#: The writer's lanes: controlstream's accepted messages, surfacestream's annotated output.
WriterInbox = Inbox[Accepted | Emitted]
#: The annotator's lanes: mappings (derived or read), surfacestream's accepted messages.
AnnotatorInbox = Inbox[Mapping | Accepted]


class AnnotatorStep:
    """The annotator's rounds (`step`): mappings and surfacestream in, the annotated
    surfacestream out to the writer's lane. Run by the run's loop
    (`unifeed.runtime.runloop`)."""

    def __init__(
        self,
        state: RunState,
        inbox: AnnotatorInbox,
        writer_inbox: WriterInbox,
        options: RuntimeOptions,
    ) -> None:
        self.state = state
        self.inbox = inbox
        self.writer_inbox = writer_inbox
        self.stage = AnnotateStage(**_stage_options(options))
        self.surface_caught_up = False
        self._sent_marker: int | None = None
        self._sent_caught_up = False
        self._closed_sent = False
        #: A batch the writer's lane had no room for (`step`).
        self._unsent: Batch[Accepted | Emitted] | None = None

    def step(self) -> bool:
        """One round: take what came in, annotate, hand on to the writer. Whether
        records moved (end flags alone move nothing). While the writer's lane is full,
        what is ready waits here and nothing new is taken."""
        sent_before = False
        if self._unsent is not None:
            if not self._send(self._unsent):
                return False
            self._unsent = None
            sent_before = True
        if self._closed_sent:
            # The annotated feed has ended; keep emptying the inbox so that the control
            # reader (which also feeds mappings here) never waits on it.
            return any(
                b.records for _, b in self.inbox.take([MAPPINGSTREAM, SURFACESTREAM], 0)
            )
        stage = self.stage
        c = stage.combiner
        lanes = [lane for lane in (MAPPINGSTREAM, SURFACESTREAM) if c.room(lane) > 0]
        dead: list[DeadLetter] = []
        taken = self.inbox.take(lanes, 0)
        for lane, batch in taken:
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
        if not (
            out
            or dead
            or marker != self._sent_marker
            or finished
            or caught_up != self._sent_caught_up
        ):
            return sent_before or any(b.records for _, b in taken)
        sent: Batch[Accepted | Emitted] = Batch(out, dead, marker, caught_up, finished)
        self._sent_marker = marker
        self._sent_caught_up = caught_up
        self.state.counters["annotated"] = stage.annotator.annotated
        self.state.counters["unmapped"] = stage.annotator.unmapped
        if finished:
            self._closed_sent = True
        if not self._send(sent):
            self._unsent = sent
        return sent_before or bool(out or dead) or any(b.records for _, b in taken)

    def _send(self, batch: Batch[Accepted | Emitted]) -> bool:
        return self.writer_inbox.put(SURFACESTREAM, batch, 0.0)


def _stage_options(options: RuntimeOptions) -> dict[str, Any]:
    """The options a stage thread gives its core stage."""
    return {
        "realtime_threshold_ms": options.realtime_threshold_ms,
        "clock": options.clock,
        "strict_order": options.strict_order,
        "capacity": STAGE_CAPACITY,
    }


def end_round(
    committer: Committer, state: RunState, ending: bool, catching_up: bool = False
) -> bool:
    """A writing thread's end of a round: when ``ending`` (returns True), the open
    transaction is committed, unless the run failed: then it is aborted, not committed,
    and the restart redoes it from the last checkpoint; else a commit that is due
    (``catching_up``: `Committer.due`)."""
    if ending:
        if state.failure is None:
            committer.commit(reopen=False)
        return True
    if committer.due(catching_up):
        committer.commit()
    return False


#: How a writer queues one lane's records into its stage.
Push = Callable[[list[Any]], bool]


class WriterStep:
    """The merge of the output's feeds (a `MergeStage`, one lane each), written and
    committed by the `Committer`, a round at a time (`step`, run by the run's loop:
    `unifeed.runtime.runloop`).

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
        self.state = state
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
        #: The feeds are exhausted and all of them committed.
        self.finished = False
        #: The writing is over (finished, or the run stopped).
        self.done = False
        #: A periodic commit runs in a thread of its own (`_Commit`) while the run's loop
        #: runs the other stages; the writer waits for it to end before it produces
        #: again. The last commit is made in the last round.
        self._commit: _Commit | None = None

    @property
    def committing(self) -> bool:
        """A periodic commit is under way."""
        return self._commit is not None and self._commit.is_alive()

    def wait_for_commit(self, timeout_s: float) -> None:
        """Wait up to ``timeout_s`` for the commit under way to end."""
        if self._commit is not None:
            self._commit.join(timeout_s)

    def close(self) -> None:
        """After the last round, or a failure: a commit under way ends first, then the
        open transaction is aborted (`Committer.close`)."""
        if self._commit is not None:
            self._commit.join(2 * FLUSH_TIMEOUT_S + 5)  # its flush, then its commit
        self.committer.close()

    def step(self) -> bool:
        """One round: take what came in, merge, write, commit when due. Whether records
        moved. Sets ``done`` at the end: the feeds exhausted (``finished``), or the run
        stopping (its open transaction committed unless it failed)."""
        stopping = self.state.stop.is_set()
        if self._commit is not None:
            # Nothing is produced while the transaction commits.
            if self._commit.is_alive() and not stopping:
                return False
            self._commit.finish()
            self._commit = None
        stage = self.stage
        c = stage.combiner
        committer = self.committer
        pushes = self.pushes
        lanes = [lane for lane in pushes if c.room(lane) > 0]
        taken = self.inbox.take(lanes, 0)
        for lane, batch in taken:
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
            self.done = True
            return True
        if stopping:
            end_round(committer, self.state, True)
            self.done = True
        elif committer.due(catching_up=c.last_mode is Mode.CATCHUP):
            self._commit = _Commit(committer)
            self._commit.start()
        return bool(out) or any(b.records for _, b in taken)


class _Commit(threading.Thread):
    """One periodic commit (`Committer.commit`) in a thread of its own: it waits for the
    broker (every record delivered, then the transaction committed), and the stages
    before the writer keep working meanwhile."""

    def __init__(self, committer: Committer) -> None:
        super().__init__(name="commit", daemon=True)
        self.committer = committer
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.committer.commit()
        except BaseException as exc:
            self.error = exc

    def finish(self) -> None:
        """Wait for the commit to end; its error, if any, is raised here."""
        self.join()
        if self.error is not None:
            raise self.error
