"""Summarise py-spy's raw (collapsed-stack) output: where each thread spends its samples.

    python -m benchmarks.pyspy_summary PROFILE.txt [--top 15] [--functions]

For each thread: its share of all samples, then its leaf frames (file:line by default,
functions with ``--functions``) by share of that thread's samples. Recorded with
``--idle`` the shares include waiting (``Condition.wait``, ``consume``/``poll``); with
``--gil`` only the thread holding the GIL is sampled, so the shares are of Python work.
Profiles come from the Kafka benchmarks run with ``--pyspy PATH`` (see ``_kafka_harness``)
or from any ``py-spy record --threads --format raw``.
"""

from __future__ import annotations

import argparse
import re
from collections import Counter, defaultdict
from pathlib import Path

_PREFIX = re.compile(r" \((?:[^()]*/site-packages/|[^()]*/lib/python3\.\d+/|[^()]*/(?=unifeed/))")
_LINE = re.compile(r":\d+\)$")


def summarise(path: Path, top: int, functions: bool) -> str:
    per_thread: defaultdict[str, Counter[str]] = defaultdict(Counter)
    totals: Counter[str] = Counter()
    for raw in path.read_text(errors="replace").splitlines():
        stack, _, count = raw.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = stack.split(";")
        thread = frames[0]
        leaf = _PREFIX.sub(" (", frames[-1]) if len(frames) > 1 else "(no Python frame)"
        if functions:
            leaf = _LINE.sub(")", leaf)
        per_thread[thread][leaf] += int(count)
        totals[thread] += int(count)
    everything = sum(totals.values()) or 1
    lines = [f"{path.name}: {everything} samples"]
    for thread, n in totals.most_common():
        lines.append(f"== {thread}: {100 * n / everything:.1f}% of samples")
        for leaf, m in per_thread[thread].most_common(top):
            lines.append(f"   {100 * m / n:5.1f}%  {leaf}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.pyspy_summary")
    parser.add_argument("profile", type=Path, nargs="+")
    parser.add_argument("--top", type=int, default=15)
    parser.add_argument("--functions", action="store_true", help="group lines by function")
    args = parser.parse_args()
    for path in args.profile:
        print(summarise(path, args.top, args.functions))


if __name__ == "__main__":
    main()
