"""``unifeed ingest``: one big response into records, and a sustained replay into Kafka.

(a) One 9,000-aircraft airplanes.live-sized response (about 11 MB, ~50 fields per
    aircraft) into controlstream and surfacestream records (decode, tracker, encode) in
    steady state (the tracker has seen the previous response, so every aircraft has a new
    position and no flight is new), against plain ``msgspec.json.decode`` of the same
    response into Python objects. Target: ingest >= 0.3x msgspec's speed.
(b) ``unifeed ingest --replay FILE --speed 0 --control kafka:C --surface kafka:S`` as a
    process on the embedded broker: 40 responses of 3,000 aircraft; records per second
    written, reported beside ``unifeed load`` of the same records (the cost of getting
    them into the broker at all). Reported, not asserted.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest

from benchmarks._adsb import response
from benchmarks._peers import Interleaved
from unifeed.ingest import Tracker, decode_response, load_airports
from unifeed.kafka.embedded import EmbeddedBroker

RECORDS_TARGET = 0.3
AIRCRAFT = 9_000
WARMUP, ROUNDS = 2, 11
REPO = Path(__file__).resolve().parent.parent


class Polls:
    """The responses of the run in order; the peer decodes the one the subject takes next."""

    def __init__(self) -> None:
        self.bodies = [response(AIRCRAFT, step) for step in range(WARMUP + ROUNDS + 1)]
        self.tracker = Tracker(nearest_airport=load_airports().nearest)
        first = decode_response(self.bodies[0])
        self.tracker.process(first, pitr=first.now_ms)  # flights and links exist from here on
        self.next = 1
        self.records: list[int] = []

    def plain_decode(self) -> Any:
        return msgspec.json.decode(self.bodies[self.next])

    def ingest(self) -> int:
        body = self.bodies[self.next]
        self.next += 1
        snapshot = decode_response(body)
        batch = self.tracker.process(snapshot, pitr=snapshot.now_ms + 300)
        count = len(batch.control) + len(batch.surface)
        self.records.append(count)
        return count


@pytest.mark.benchmark(group="ingest-response")
def test_response_into_records_vs_plain_msgspec(benchmark: Any) -> None:
    polls = Polls()
    runs = Interleaved(polls.plain_decode, polls.ingest, (), warmup_rounds=WARMUP, rounds=ROUNDS)
    runs.run(benchmark)
    # Every aircraft with a position became a record: nothing was skipped as unchanged.
    assert polls.tracker.skipped["unchanged"] == 0
    with_position = sum(1 for i in range(AIRCRAFT) if i % 33 != 5)
    assert polls.records[-1] == with_position + 2  # and one keepalive per feed
    ratio = runs.compare(benchmark, AIRCRAFT, "ingest of a 9,000-aircraft response",
                         "msgspec.json.decode")  # fmt: skip
    benchmark.extra_info.update(body_bytes=len(polls.bodies[1]), target=RECORDS_TARGET)
    assert ratio >= RECORDS_TARGET, (
        f"ingest handles a response at {ratio:.2f}x the speed of plain msgspec decoding "
        f"(target >= {RECORDS_TARGET}x)"
    )


# --- (b) a sustained replay into the embedded broker --------------------------------


@pytest.fixture(scope="module")
def broker() -> Iterator[str]:
    with EmbeddedBroker() as embedded:
        yield embedded.bootstrap_servers


def _cli(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("UNIFEED_")}
    env["PYTHONPATH"] = str(REPO)
    done = subprocess.run([sys.executable, "-m", "unifeed", *args], env=env,
                          capture_output=True, text=True, timeout=timeout, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr
    return done


@pytest.mark.kafka_bench
@pytest.mark.benchmark(group="ingest-replay-kafka")
def test_sustained_replay_into_kafka(benchmark: Any, broker: str, tmp_path: Path) -> None:
    replay = tmp_path / "responses.jsonl"
    with replay.open("wb") as f:
        for step in range(40):
            f.write(response(3_000, step) + b"\n")
    # The same records as files, for the peer.
    ctl, srf = tmp_path / "ctl.jsonl", tmp_path / "srf.jsonl"
    _cli("ingest", "--replay", str(replay), "--speed", "0", "--control", str(ctl),
         "--surface", str(srf), "-q")  # fmt: skip
    both = tmp_path / "both.jsonl"
    both.write_bytes(ctl.read_bytes() + srf.read_bytes())
    records = sum(1 for _ in both.open("rb"))
    kafka = ["--bootstrap-servers", broker]
    rounds = iter(range(100))
    finals: list[str] = []

    def load() -> None:
        _cli("load", str(both), "--topic", f"kafka:load{next(rounds)}", *kafka)

    def ingest() -> None:
        n = next(rounds)
        done = _cli("ingest", "--replay", str(replay), "--speed", "0", "--control",
                    f"kafka:ctl{n}", "--surface", f"kafka:srf{n}", "--status-interval", "60s",
                    *kafka)  # fmt: skip
        finals.append([line for line in done.stderr.splitlines() if "ingest done" in line][-1])

    runs = Interleaved(load, ingest, (), warmup_rounds=1, rounds=3)
    runs.run(benchmark)
    for final in finals:
        written = [int(x) for x in re.findall(r"(?:control|surface)=(\d+)", final)]
        assert sum(written) == records, final
    ratio = runs.compare(benchmark, records, "ingest --replay into Kafka (40 x 3,000 aircraft, "
                         "process start included)", "unifeed load of the same records")  # fmt: skip
    benchmark.extra_info.update(responses=40, aircraft=3_000)
    print(f"ingest --replay into Kafka: {records:,} records, ratio to load {ratio:.3f}")
