"""The end-of-log watch of one reader (`EndOfLogWatch`): when being at the end of its
partition counts as progress. Pure: the clock is given."""

from __future__ import annotations

import time
from collections.abc import Callable


class EndOfLogWatch:
    """Says ``caught_up`` once per stay at the end of the log, after ``grace_s`` there.

    A reader at the end of its log lets catch-up pass its feed only once it has stayed
    there for the grace period: a source that is merely slow to top up an old backlog
    must not let catch-up run ahead of it (which would emit its next messages as late).
    Any record read ends the stay; the next stay is reported again.

    >>> now = [0.0]
    >>> w = EndOfLogWatch(2.0, clock=lambda: now[0])
    >>> w.update(read=False, eof=True)        # arrived at the end
    False
    >>> now[0] = 2.5; w.update(read=False, eof=False)
    True
    >>> w.update(read=False, eof=False)       # reported once a stay
    False
    >>> w.update(read=True, eof=False)        # a record: the stay is over
    False
    """

    __slots__ = ("_clock", "_grace_s", "_reported", "_since")

    def __init__(self, grace_s: float, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._grace_s = grace_s
        self._clock = clock
        self._since: float | None = None
        self._reported = False

    @property
    def at_end(self) -> bool:
        """The reader has been at the end of its log since its last record."""
        return self._since is not None

    def update(self, *, read: bool, eof: bool) -> bool:
        """After one read: ``read`` (it returned records), ``eof`` (the end was seen).
        True when this is the moment to report the feed caught up."""
        if read:
            self._since = None
            self._reported = False
        if eof and self._since is None:
            self._since = self._clock()
        if self._since is None or self._reported:
            return False
        if self._clock() - self._since >= self._grace_s:
            self._reported = True
            return True
        return False
