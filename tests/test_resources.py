"""Bounded resources: the link tables expire stale links (judged from pitr, so batching
never changes the output), and `unifeed combine` on Kafka keeps a flat memory footprint
over a long simulated day that is many times the broker's retention."""

from __future__ import annotations

import bisect
import hashlib
import random
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Producer

from tests.support.kafkatools import Follower, keepalive, start_cli
from unifeed.core.annotate import Annotator
from unifeed.core.mapping import MappingDeriver
from unifeed.core.records import Keepalive, Mapping, PowerOff, PowerOn
from unifeed.core.unify import CATCHUP_CLOCK, Unifier, run_unifier
from unifeed.sim.traffic import iter_traffic

T0 = 1_700_000_000_000
MINUTE = 60_000
#: Both tables drop stale links at most this long after they became stale (pitr time).
PRUNE_EVERY_MS = 60_000


def link(pitr: int, track: str, flight: str, access: str = "public") -> Mapping:
    return Mapping(pitr=pitr, surface_id=track, id=flight, action="link", access=access,
                   facility="KSFO")


def unlink(pitr: int, track: str, flight: str) -> Mapping:
    return Mapping(pitr=pitr, surface_id=track, id=flight, action="unlink", access="public",
                   facility="KSFO")


def ground(pitr: int, track: str) -> bytes:
    return (b'{"type":"ground_position","pitr":%d,"surface_id":"%s","facility":"KSFO",'
            b'"clock":%d,"lat":37.6,"lon":-122.4}' % (pitr, track.encode(), pitr - 300))


# -- (a) link tables -----------------------------------------------------------


def test_annotator_link_unused_for_the_ttl_expires_and_is_counted() -> None:
    ttl = 1000
    ann = Annotator(link_ttl_ms=ttl)
    ann.apply(link(T0, "S1", "F1"))
    assert ann.annotate_ground(ground(T0 + ttl, "S1"), "S1", T0 + ttl) != ground(T0 + ttl, "S1")
    # Used at T0 + ttl: alive until T0 + 2 ttl, expired one millisecond later.
    late = T0 + 2 * ttl + 1
    assert ann.annotate_ground(ground(late, "S1"), "S1", late) == ground(late, "S1")
    stats = ann.stats()
    assert (stats.annotated, stats.unmapped, stats.expired_links, stats.active_links) == (1, 1, 1, 0)
    # A link nobody uses is pruned once mappings move pitr past its TTL.
    ann.apply(link(late, "S2", "F2"))
    ann.apply(link(late + ttl + PRUNE_EVERY_MS, "S3", "F3"))
    stats = ann.stats()
    assert (stats.expired_links, stats.active_links) == (2, 1)
    assert ann.link_of("S2") is None and ann.link_of("S3") == ("F3", "public")
    # An unlink older than the TTL finds nothing to end.
    ann.apply(unlink(late + 3 * ttl + PRUNE_EVERY_MS, "S3", "F3"))
    assert ann.stats().unmatched_unlinks == 1


def test_deriver_link_older_than_the_ttl_expires_and_is_counted() -> None:
    ttl = 1000
    deriver = MappingDeriver(link_ttl_ms=ttl)
    deriver.process(PowerOn(pitr=T0, id="F1", surface_id="S1", facility="KSFO"))
    deriver.process(PowerOn(pitr=T0, id="F2", surface_id="S2", facility="KSFO"))
    # Within the TTL, power_off unlinks; past it the link is stale and nothing is emitted.
    out = deriver.process(PowerOff(pitr=T0 + ttl, id="F1", surface_id="S1", facility="KSFO"))
    assert [m.action for m in out if isinstance(m, Mapping)] == ["unlink"]
    out = deriver.process(PowerOff(pitr=T0 + ttl + 1, id="F2", surface_id="S2", facility="KSFO"))
    assert [m for m in out if isinstance(m, Mapping)] == []
    deriver.process(Keepalive(pitr=T0 + PRUNE_EVERY_MS))
    stats = deriver.stats()
    assert (stats.unlinks, stats.unmatched_unlinks) == (1, 1)
    assert (stats.expired_links, stats.active_links) == (1, 0)


@dataclass
class Churn:
    """Thousands of flights linking a fresh track each; most end with an unlink, some are
    abandoned (the unlink never comes). Positions every 30 s while linked."""

    ttl_ms: int
    flights: int = 4000
    seed: int = 11
    events: list[tuple[int, int, Any]] = field(default_factory=list)  # (pitr, order, event)
    abandoned: dict[str, int] = field(default_factory=dict)  # track -> last activity
    link_pitr: dict[str, int] = field(default_factory=dict)
    unlink_pitr: dict[str, int] = field(default_factory=dict)
    end: int = 0

    def __post_init__(self) -> None:
        rng = random.Random(self.seed)
        t = T0
        for n in range(self.flights):
            t += rng.randrange(0, 40_000)
            track, flight = f"S{n}", f"F{n}"
            positions = rng.randrange(1, 40)
            last = t + positions * 30_000
            self.link_pitr[track] = t
            self.events.append((t, 0, ("link", track, flight)))
            for k in range(1, positions + 1):
                self.events.append((t + k * 30_000, 1, ("position", track, flight)))
            if rng.random() < 0.25:
                self.abandoned[track] = last
            else:
                self.unlink_pitr[track] = last + 5_000
                self.events.append((last + 5_000, 0, ("unlink", track, flight)))
        self.events.sort(key=lambda e: (e[0], e[1]))
        self.end = self.events[-1][0]

    def live_tracks(self, now: int, stale_after: int) -> int:
        """Tracks linked at ``now``: not unlinked yet, and (abandoned ones) linked within
        ``stale_after`` (links age from their link event, not from their use)."""
        count = 0
        for track, linked in self.link_pitr.items():
            if linked > now:
                continue
            if track in self.abandoned:
                count += now - linked <= stale_after
            else:
                count += self.unlink_pitr[track] > now
        return count


def test_annotator_table_holds_only_active_links_after_long_churn() -> None:
    churn = Churn(ttl_ms=30 * MINUTE)  # above every flight's time on the ground
    ann = Annotator(link_ttl_ms=churn.ttl_ms)
    peak_excess = 0
    for n, (pitr, _, (kind, track, flight)) in enumerate(churn.events):
        if kind == "link":
            ann.apply(link(pitr, track, flight))
        elif kind == "unlink":
            ann.apply(unlink(pitr, track, flight))
        else:
            raw = ground(pitr, track)
            assert ann.annotate_ground(raw, track, pitr) != raw, "tracks live below the TTL"
        if n % 2000 == 0:
            # Never more than the live tracks plus those gone stale since the last prune
            # (pruning runs with mappings: at most a prune interval and a gap apart).
            bound = churn.live_tracks(pitr, churn.ttl_ms + 2 * PRUNE_EVERY_MS)
            peak_excess = max(peak_excess, ann.stats().active_links - bound)
    assert peak_excess <= 0
    ann.expire(churn.end)
    stats = ann.stats()
    cut = churn.end - churn.ttl_ms
    stale = sum(churn.link_pitr[track] < cut for track in churn.abandoned)
    assert stats.active_links == churn.live_tracks(churn.end, churn.ttl_ms)
    assert stats.expired_links == stale
    assert stale > 500 and stats.unmatched_unlinks == 0
    assert stats.active_links < len(churn.abandoned) / 10, "stale links were kept"


def test_deriver_table_holds_only_active_links_after_long_churn() -> None:
    churn = Churn(ttl_ms=30 * MINUTE)  # above every flight's time on the ground
    deriver = MappingDeriver(link_ttl_ms=churn.ttl_ms)
    for pitr, _, (kind, track, flight) in churn.events:
        if kind == "link":
            deriver.process(PowerOn(pitr=pitr, id=flight, surface_id=track, facility="KSFO"))
        elif kind == "unlink":
            deriver.process(PowerOff(pitr=pitr, id=flight, surface_id=track, facility="KSFO"))
    final = churn.end + PRUNE_EVERY_MS  # at least one prune after the end
    deriver.process(Keepalive(pitr=final))
    stats = deriver.stats()
    cut = final - churn.ttl_ms
    assert stats.unlinks == len(churn.unlink_pitr) and stats.unmatched_unlinks == 0
    assert stats.expired_links == sum(churn.link_pitr[t] < cut for t in churn.abandoned)
    assert stats.active_links == sum(churn.link_pitr[t] >= cut for t in churn.abandoned)
    assert stats.expired_links > 500


def ttl_scenario(ttl: int, flights: int = 600, seed: int = 5) -> tuple[list[bytes], list[bytes], int]:
    """Flights whose track goes quiet for a while: shorter than the TTL (still annotated
    after) or longer (expired: unmapped after). Returns the positions expected unmapped."""
    rng = random.Random(seed)
    control: list[tuple[int, bytes]] = []
    surface: list[tuple[int, bytes]] = []
    unmapped = 0
    t = T0
    for n in range(flights):
        t += rng.randrange(0, 20_000)
        track, flight = f"S{n}", f"F{n}"
        control.append((t, b'{"type":"power_on","pitr":%d,"id":"%s","surface_id":"%s",'
                           b'"facility":"KSFO"}' % (t, flight.encode(), track.encode())))
        pos = [t + k * 20_000 for k in range(1, rng.randrange(2, 6))]
        gap = rng.choice([ttl // 2, 2 * ttl])
        after = [pos[-1] + gap + k * 20_000 for k in range(rng.randrange(1, 4))]
        if gap > ttl:
            unmapped += len(after)
        surface.extend((p, ground(p, track)) for p in pos + after)
        if rng.random() < 0.5:
            off = after[-1] + 1000
            control.append((off, b'{"type":"power_off","pitr":%d,"id":"%s","surface_id":"%s",'
                                 b'"facility":"KSFO"}' % (off, flight.encode(), track.encode())))
    control.sort(key=lambda e: e[0])
    surface.sort(key=lambda e: e[0])
    return [c for _, c in control], [s for _, s in surface], unmapped


def run_batched(control: list[bytes], surface: list[bytes], ttl: int,
                schedule: list[tuple[str, int]]) -> tuple[list[bytes], Any]:
    """Drive a Unifier by hand: ``schedule`` cycles through (feed, batch size)."""
    unifier = Unifier(clock=CATCHUP_CLOCK, link_ttl_ms=ttl)
    cursors = {"controlstream": 0, "surfacestream": 0}
    lines = {"controlstream": control, "surfacestream": surface}
    out: list[bytes] = []
    step = 0
    while any(cursors[f] < len(lines[f]) for f in lines):
        feed, size = schedule[step % len(schedule)]
        step += 1
        start = cursors[feed]
        if start >= len(lines[feed]):
            continue
        batch = lines[feed][start:start + size]
        cursors[feed] += len(batch)
        unifier.feed(feed, [(start + i + 1, raw) for i, raw in enumerate(batch)])
        if cursors[feed] == len(lines[feed]):
            unifier.close(feed)
        out.extend(unifier.drain())
    out.extend(unifier.drain())
    return out, unifier


def test_expiry_is_judged_from_pitr_so_batching_never_changes_the_output() -> None:
    ttl = 5 * MINUTE
    control, surface, expected_unmapped = ttl_scenario(ttl)
    reference, ref_run = run_batched(control, surface, ttl, [("controlstream", 10**9),
                                                            ("surfacestream", 10**9)])
    stats = ref_run.annotate.annotator.stats()
    assert stats.unmapped == expected_unmapped > 100
    assert stats.expired_links > 50
    no_ttl, _ = run_batched(control, surface, 10**12, [("controlstream", 10**9),
                                                       ("surfacestream", 10**9)])
    assert no_ttl != reference, "the TTL must matter in this scenario"
    schedules = [
        [("controlstream", 1), ("surfacestream", 1)],
        [("surfacestream", 7), ("controlstream", 3)],
        [("surfacestream", 500), ("controlstream", 1)],
        [("controlstream", 64), ("surfacestream", 64), ("surfacestream", 64)],
    ]
    for schedule in schedules:
        out, run = run_batched(control, surface, ttl, schedule)
        assert out == reference, f"batching {schedule} changed the output"
        assert run.annotate.annotator.stats() == stats
    for chunk in (1, 13, 4096):
        unifier = Unifier(clock=CATCHUP_CLOCK, link_ttl_ms=ttl)
        out = []
        run_unifier(unifier, {"controlstream": control, "surfacestream": surface}, out.extend,
                    chunk=chunk)
        assert out == reference, f"run_unifier chunk={chunk} changed the output"


# -- (b) a long day through Kafka: flat memory -----------------------------------

DAY_ARGS: dict[str, Any] = {"seed": 7, "minutes": 1440, "airports": 2, "rate": 0.7}
#: Output records the loader may be ahead of combine: with the keepalives in between, about
#: 22,000 records a partition, 3.8 MB before lz4: under the embedded broker's 5 MB.
AHEAD = 30_000


class RssSampler(threading.Thread):
    """VmRSS of a process every 0.05 s, with the output count at that moment (often
    enough for 20 samples after warm-up when combine runs a day in a few seconds)."""

    def __init__(self, pid: int, progress: Callable[[], int]) -> None:
        super().__init__(daemon=True)
        self.status = Path(f"/proc/{pid}/status")
        self.progress = progress
        self.samples: list[tuple[float, int, int]] = []  # (time, rss MB, output records)
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.wait(0.05):
            try:
                text = self.status.read_text()
            except OSError:
                return  # the process has exited
            rss = [int(x.split()[1]) for x in text.splitlines() if x.startswith("VmRSS:")]
            if not rss:
                return  # a zombie: the process has exited
            self.samples.append((time.monotonic(), rss[0] // 1024, self.progress()))


@pytest.mark.kafka
@pytest.mark.slow
def test_long_day_through_kafka_keeps_memory_flat(
    kafka_bootstrap: str, unique_topic: Callable[..., str]
) -> None:
    started = time.monotonic()
    ctl, srf, out = unique_topic("ctl"), unique_topic("srf"), unique_topic("out")
    # iter_traffic yields both feeds merged in pitr order: the order a live source sends.
    merged = [(pitr, feed, raw) for feed, pitr, raw in iter_traffic(**DAY_ARGS)]
    last = merged[-1][0]
    merged += [(last + 1000, f, keepalive(last + 1000)) for f in ("controlstream", "surfacestream")]
    feeds: dict[str, list[bytes]] = {"controlstream": [], "surfacestream": []}
    # writes[i]: how many of merged[:i] show up in the output (keepalives do not).
    writes = [0]
    for _, feed, raw in merged:
        feeds[feed].append(raw)
        writes.append(writes[-1] + (not raw.startswith(b'{"type":"keepalive"')))
    # What the file pipeline writes, kept as a count and a digest only.
    digest, count = hashlib.sha256(), [0]

    def expect(batch: list[bytes]) -> None:
        count[0] += len(batch)
        for raw in batch:
            digest.update(raw + b"\n")

    run_unifier(Unifier(clock=CATCHUP_CLOCK), dict(feeds), expect)
    del feeds
    assert count[0] == writes[-1] > 300_000
    topics = {"controlstream": ctl, "surfacestream": srf}

    follower = Follower(kafka_bootstrap, out)
    follower.start()
    # Partition 0 named: the topic is created after the start (a topic read whole that is
    # created with several partitions, as the embedded broker does, stops the run).
    proc = start_cli(["combine", "--control", f"kafka:{ctl}:0", "--surface", f"kafka:{srf}:0",
                      "--output", f"kafka:{out}", "--bootstrap-servers", kafka_bootstrap,
                      "--instance", f"day-{out}", "--checkpoint-topic", f"{out}.checkpoints",
                      "--status-interval", "0", "--log-level", "warning",
                      "--stop-at", str(last), "--wait-for-topics"])
    sampler = RssSampler(proc.pid, lambda: len(follower.values))
    sampler.start()
    producer = Producer({"bootstrap.servers": kafka_bootstrap, "linger.ms": 20,
                         "compression.type": "lz4", "enable.idempotence": True})
    try:
        loaded = 0
        deadline = time.monotonic() + 150
        while loaded < len(merged):
            assert time.monotonic() < deadline, f"loading stalled at {loaded}/{len(merged)}"
            assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
            assert follower.error is None, follower.error
            # Stay at most AHEAD output records past what combine has written.
            limit = bisect.bisect_right(writes, len(follower.values) + AHEAD) - 1
            if loaded >= limit:
                producer.poll(0.02)
                continue
            for pitr, feed, raw in merged[loaded:limit]:
                while True:
                    try:
                        producer.produce(topics[feed], raw, partition=0, timestamp=pitr)
                        break
                    except BufferError:
                        producer.poll(0.05)
            loaded = limit
            assert producer.flush(30) == 0
        rc = proc.wait(timeout=max(10.0, deadline - time.monotonic()))
        assert rc == 0, proc.stderr.read().decode() if proc.stderr else ""
    finally:
        sampler.stop.set()
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    got = follower.finish(count[0])
    assert len(got) == count[0]
    assert hashlib.sha256(b"".join(raw + b"\n" for raw in got)).digest() == digest.digest()

    # After warm-up (the first 5% of the output), memory must not grow with the stream.
    samples = [(t, mb) for t, mb, done in sampler.samples if done >= count[0] // 20]
    assert len(samples) >= 20, f"only {len(samples)} samples"
    quarter = len(samples) // 4
    first = statistics.median(mb for _, mb in samples[:quarter])
    final = statistics.median(mb for _, mb in samples[-quarter:])
    peak = max(mb for _, mb, _ in sampler.samples)
    took = time.monotonic() - started
    print(f"\nlong day: {count[0]} records in {took:.0f} s; combine RSS first quarter "
          f"{first:.0f} MB, last quarter {final:.0f} MB, peak {peak} MB")
    assert final <= first + 40, f"RSS grew from {first} MB to {final} MB"
    assert peak < 300, f"RSS peaked at {peak} MB"
