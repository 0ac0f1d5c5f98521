"""Comparing a subject with its peer in the same session, round by round.

The machine is shared and its load drifts: a peer measured a minute apart from its subject
can see a different machine. So every round of the subject's benchmark is preceded by one
round of the peer (in pytest-benchmark's ``setup`` hook, outside the subject's timing), and
the target is checked on the ratio of the two medians of those interleaved rounds. Wall
time decides; process CPU time is recorded beside it to show how much of a spread was the
machine's load rather than the code.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

#: One line per comparison, printed at the end of the session (see conftest).
SUMMARY: list[str] = []


@dataclass
class Interleaved:
    """Runs ``peer(*args)`` before each round of the subject and times both.

    Use `run` (pedantic with `setup` as ``setup`` and `subject` as ``target``). Both sides
    are timed here, the same way (pytest-benchmark times the subject too, for its table);
    the first ``warmup_rounds`` rounds of each are dropped. With ``--benchmark-disable``
    pytest-benchmark runs one round without warm-up, and that round is compared.
    """

    peer: Callable[..., Any]
    subject_fn: Callable[..., Any]
    args: tuple[Any, ...]
    warmup_rounds: int
    rounds: int
    peer_wall: list[float] = field(default_factory=list)
    peer_cpu: list[float] = field(default_factory=list)
    subject_wall: list[float] = field(default_factory=list)
    subject_cpu: list[float] = field(default_factory=list)
    skip: int = 0

    def setup(self) -> tuple[tuple[Any, ...], dict[str, Any]]:
        cpu = time.process_time()
        wall = time.perf_counter()
        self.peer(*self.args)
        self.peer_wall.append(time.perf_counter() - wall)
        self.peer_cpu.append(time.process_time() - cpu)
        return self.args, {}

    def subject(self, *args: Any) -> Any:
        cpu = time.process_time()
        wall = time.perf_counter()
        result = self.subject_fn(*args)
        self.subject_wall.append(time.perf_counter() - wall)
        self.subject_cpu.append(time.process_time() - cpu)
        return result

    def measured(self, values: list[float]) -> list[float]:
        return values[self.skip : self.skip + self.rounds]

    def run(self, benchmark: Any) -> Any:
        self.skip = 0 if benchmark.disabled else self.warmup_rounds
        return benchmark.pedantic(
            self.subject,
            setup=self.setup,
            rounds=self.rounds,
            warmup_rounds=self.warmup_rounds,
        )

    def compare(self, benchmark: Any, messages: int, name: str, peer_name: str) -> float:
        """Record both sides in ``extra_info``; return subject throughput / peer throughput."""
        subject_wall = self.measured(self.subject_wall)
        peer_wall = self.measured(self.peer_wall)
        ratio: float = statistics.median(peer_wall) / statistics.median(subject_wall)
        cpu_ratio = statistics.median(self.measured(self.peer_cpu)) / statistics.median(
            self.measured(self.subject_cpu)
        )
        paired = statistics.median(p / s for p, s in zip(peer_wall, subject_wall, strict=True))
        benchmark.extra_info.update(
            messages=messages,
            msgs_per_s=round(messages / statistics.median(subject_wall)),
            peer=peer_name,
            peer_msgs_per_s=round(messages / statistics.median(peer_wall)),
            peer_rounds_s=[round(t, 4) for t in peer_wall],
            subject_rounds_s=[round(t, 4) for t in subject_wall],
            ratio=round(ratio, 3),
            ratio_paired_median=round(paired, 3),
            ratio_cpu=round(cpu_ratio, 3),
        )
        SUMMARY.append(
            f"{name}: {messages / statistics.median(subject_wall):,.0f} msgs/s vs {peer_name} "
            f"{messages / statistics.median(peer_wall):,.0f} msgs/s: ratio {ratio:.3f} "
            f"(paired {paired:.3f}, CPU time {cpu_ratio:.3f}; {len(subject_wall)} rounds)"
        )
        return ratio
