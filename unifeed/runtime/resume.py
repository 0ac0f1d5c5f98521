"""The resume skip: which of a restarted reader's first accepted messages were already
done by the run that left the checkpoint (`ResumeSkip`). Pure: no Kafka, no threads."""

from __future__ import annotations

from unifeed.checkpoint.store import FeedCheckpoint
from unifeed.core.records import Keepalive
from unifeed.core.stages import Accepted


class ResumeSkip:
    """Splits a restarted feed's accepted messages into *replay* (done before the
    checkpoint: they rebuild state, nothing is written for them) and the rest.

    A checkpoint position ``(pitr, skip)`` says: every message below ``pitr`` is done,
    and so are the first ``skip`` counted messages at ``pitr``. Keepalives at ``pitr``
    are replay and count only where the feed's output counts them (``count_keepalives``,
    the mappings command). Once a message is passed on, nothing after it is replay.

    >>> from unifeed.core.records import Departure
    >>> def acc(pitr):
    ...     return Accepted("controlstream", pitr, b"", Departure(pitr=pitr, id="A"))
    >>> skip = ResumeSkip(FeedCheckpoint(pitr=5, skip=1), count_keepalives=False)
    >>> replay, good = skip.split([acc(3), acc(5), acc(5), acc(6)])
    >>> [a.pitr for a in replay], [a.pitr for a in good]
    ([3, 5], [5, 6])
    >>> skip.replaying
    False
    """

    __slots__ = ("_at_pitr", "_count_keepalives", "_resume", "replaying")

    def __init__(self, resume: FeedCheckpoint | None, *, count_keepalives: bool) -> None:
        self._resume = resume
        self._count_keepalives = count_keepalives
        self._at_pitr = 0  # counted messages at the resume pitr seen so far
        self.replaying = resume is not None

    def split(self, good: list[Accepted]) -> tuple[list[Accepted], list[Accepted]]:
        """``(replay, rest)`` of one batch, in order; the state carries to the next."""
        resume = self._resume
        if not self.replaying or resume is None or not good:
            return [], good
        k = 0
        for a in good:
            p = a.rec.pitr
            counted = self._count_keepalives or type(a.rec) is not Keepalive
            if p < resume.pitr:
                k += 1
                continue
            if p == resume.pitr and counted and self._at_pitr < resume.skip:
                self._at_pitr += 1
                k += 1
                continue
            if p == resume.pitr and not counted:
                k += 1
                continue
            self.replaying = False
            break
        if not k:
            return [], good
        return good[:k], good[k:]
