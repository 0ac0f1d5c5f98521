"""Restart marks: where a restart may read one feed from (`RestartMarks`), kept by its reader for the checkpoints."""

from __future__ import annotations

import logging
import threading
from collections import deque

from unifeed.runtime.limits import MARK_SPAN

log = logging.getLogger("unifeed")

class RestartMarks:
    """Where a restart may read one feed from, kept by its reader for the checkpoints.

    Each mark is ``(first offset, last pitr)``: the offset of the first message of a
    batch the reader handed on and the highest pitr it accepted up to the end of it.
    Marks closer than ``MARK_SPAN`` offsets are merged, so a long lookback keeps few. A
    commit asks `offset_for` a pitr: every accepted message of the marks before the first
    whose last pitr reaches it has a lower pitr, so it is done, and reading again from
    that mark's offset repeats only what (pitr, skip) tells a restart to skip. The reader
    adds (once a batch) and the writer asks (once a commit) under a lock.

    >>> m = RestartMarks(start=100)
    >>> m.offset_for(5)                  # nothing handed on yet: where the run began
    100
    >>> m.add(100, 10); m.add(6000, 20); m.add(9000, 20); m.add(12000, 30)
    >>> [m.offset_for(p) for p in (10, 15, 20, 25)]    # 9000 was merged into 6000
    [100, 6000, 6000, 12000]
    >>> m.offset_for(31)                 # past every mark: where the run began
    100
    """

    def __init__(self, start: int) -> None:
        self._marks: deque[tuple[int, int]] = deque()
        self._start = start  # where this run began reading: the answer before any mark
        self._lock = threading.Lock()

    def add(self, first_offset: int, last_pitr: int) -> None:
        with self._lock:
            marks = self._marks
            if marks:
                prev_offset, prev_pitr = marks[-1]
                if first_offset - prev_offset < MARK_SPAN:
                    marks[-1] = (prev_offset, max(prev_pitr, last_pitr))
                    return
            marks.append((first_offset, last_pitr))

    def offset_for(self, pitr: int) -> int:
        with self._lock:
            marks = self._marks
            while marks and marks[0][1] < pitr:
                marks.popleft()
            return marks[0][0] if marks else self._start
