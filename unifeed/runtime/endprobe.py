"""The ends of idle partitions, asked for beside the run (`EndProbe`).

librdkafka reports no end of log for an empty partition, so a reader that has read
nothing for a while asks the broker for its partition's end (its high watermark) to know
whether it is at the end (`unifeed.runtime.reader.FeedReader.step`). That question can
take as long as its timeout when the broker, or that partition's leader, does not answer;
asked in the run's loop, it held up every partition of the run, one after another (with
the broker gone, 5 s per idle partition before the run could even see that it had
failed). Here a thread of its own asks, with a client of its own, and the reader takes
the answer on a later round.

An answer counts only for the reader's state when it was asked: the reader ignores one
asked before its last read (`answer`'s ``since``), so an end seen here means the same as
one asked in the loop.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any, Final

from confluent_kafka import Consumer

from unifeed.kafka.clients import Target, watermarks

#: How long one question waits for the broker (as the reader's own query did).
ASK_TIMEOUT_S: Final = 5.0

#: An answer: the partition's end, or the error asking raised.
Answer = int | Exception


class EndProbe:
    """Asks for the ends of partitions, one question at a time, oldest first, in a thread
    it starts on the first question; `close` ends it (without waiting for a question
    under way: the thread is a daemon, its client is closed when the question returns)."""

    def __init__(
        self,
        config: dict[str, Any],
        name: str = "end-probe",
        client: Callable[[], Any] | None = None,
    ) -> None:
        """``config``: the settings of its client (a reader's consumer settings);
        ``client`` makes another one (tests)."""
        self._config = config
        self._client = client
        self._name = name
        self._cv = threading.Condition()
        # Questions waiting or under way (when asked), and answers not taken yet.
        self._asked: dict[Target, float] = {}
        self._answers: dict[Target, tuple[float, Answer]] = {}
        self._closed = False
        self._thread: threading.Thread | None = None

    def ask(self, target: Target) -> None:
        """Ask for ``target``'s end (nothing new while a question of it is open)."""
        with self._cv:
            if self._closed or target in self._asked:
                return
            self._asked[target] = time.monotonic()
            if self._thread is None:
                self._thread = threading.Thread(target=self._work, name=self._name, daemon=True)
                self._thread.start()
            self._cv.notify()

    def answer(self, target: Target, since: float) -> Answer | None:
        """The answer for ``target`` to a question asked at or after ``since`` (a
        `time.monotonic` time), taken; None when there is none (yet)."""
        with self._cv:
            got = self._answers.get(target)
            if got is None:
                return None
            del self._answers[target]
            asked_at, answer = got
            return answer if asked_at >= since else None

    def close(self) -> None:
        with self._cv:
            self._closed = True
            self._asked.clear()
            self._cv.notify_all()

    def _work(self) -> None:
        consumer: Any = None
        try:
            while True:
                with self._cv:
                    while not self._asked and not self._closed:
                        self._cv.wait(1.0)
                    if self._closed:
                        return
                    target, asked_at = next(iter(self._asked.items()))
                answer: Answer
                try:
                    if consumer is None:
                        consumer = (
                            self._client() if self._client is not None else Consumer(self._config)
                        )
                    answer = watermarks(consumer, target, ASK_TIMEOUT_S)[1]
                except Exception as exc:  # handed to the reader, which decides
                    answer = exc
                with self._cv:
                    self._asked.pop(target, None)
                    if not self._closed:
                        self._answers[target] = (asked_at, answer)
        finally:
            if consumer is not None:
                consumer.close()
