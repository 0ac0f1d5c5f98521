"""In-process benchmarks: the combining rule, and the file pipeline, each against a peer.

(a) `Combiner` vs `heapq.merge` on the same pre-decoded messages of two feeds (2:1 rates):
    the Combiner is fed as the runtime feeds it (`push_many` batches from the feed that lags,
    `drain_list` after each) with a clock far in the future (catch-up).
    Target: Combiner throughput >= 0.4x heapq.merge's.
(b) ``unifeed combine`` on the busy-airport files (validate, derive mappings, annotate,
    combine twice, write) vs a baseline that decodes only ``pitr`` and `heapq.merge`s the
    lines into a file. Target: pipeline throughput >= 0.5x the baseline's.
(c) `AnnotateStage` (the annotator thread's work: the combining rule over mappings and
    surface messages, then annotation) on the busy-airport surfacestream and the mappings
    derived from its controlstream, vs `heapq.merge` of the two and a dict of splices.
    Target: the stage's throughput >= 0.5x the dict splice's.
"""

from __future__ import annotations

import gzip
import heapq
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import pytest

from benchmarks._data import (
    FAR_FUTURE_MS,
    TwoFeedInput,
    decode_pitr,
    drive_annotate_stage,
    two_feed_merge_input,
)
from benchmarks._options import BenchOptions
from benchmarks._peers import Interleaved
from unifeed import Combiner, Feed
from unifeed.cli.main import main as unifeed_main
from unifeed.core.mapping import MappingDeriver
from unifeed.core.records import (
    CONTROLSTREAM,
    SURFACESTREAM,
    GroundPosition,
    Keepalive,
    Mapping,
)
from unifeed.core.stages import FeedIntake

MERGE_TARGET = 0.4
PIPELINE_TARGET = 0.5
BATCHES = (1000, 5000)

# --- (a) the combining rule --------------------------------------------------------


@pytest.fixture(scope="module", params=BATCHES, ids=lambda b: f"batch{b}")
def merge_input(request: pytest.FixtureRequest, bench_options: BenchOptions) -> TwoFeedInput:
    return two_feed_merge_input(bench_options.merge_messages, batch=request.param)


def heapq_merge(data: TwoFeedInput) -> list[tuple[int, int, bytes]]:
    return list(heapq.merge(data.tuples[CONTROLSTREAM], data.tuples[SURFACESTREAM]))


def combiner_merge(data: TwoFeedInput) -> list[Any]:
    """Push the batch of the feed that lags most, then drain; close each feed at its end."""
    combiner = Combiner(
        [
            Feed(CONTROLSTREAM, required_realtime=True, required_catchup=True),
            Feed(SURFACESTREAM, required_realtime=False, required_catchup=True),
        ],
        clock=lambda: FAR_FUTURE_MS,
    )
    out: list[Any] = []
    extend = out.extend
    push_many = combiner.push_many
    drain_list = combiner.drain_list
    control = data.batches[CONTROLSTREAM]
    surface = data.batches[SURFACESTREAM]
    i = j = 0
    last_control = last_surface = -1
    while i < len(control) or j < len(surface):
        if j >= len(surface) or (i < len(control) and last_control <= last_surface):
            pitrs, payloads = control[i]
            push_many(CONTROLSTREAM, pitrs, payloads)
            last_control = pitrs[-1]
            i += 1
            if i == len(control):
                combiner.close(CONTROLSTREAM)
        else:
            pitrs, payloads = surface[j]
            push_many(SURFACESTREAM, pitrs, payloads)
            last_surface = pitrs[-1]
            j += 1
            if j == len(surface):
                combiner.close(SURFACESTREAM)
        extend(drain_list())
    return out


@pytest.mark.benchmark(group="merge-1M")
def test_combiner_vs_heapq_merge(benchmark: Any, merge_input: TwoFeedInput) -> None:
    runs = Interleaved(heapq_merge, combiner_merge, (merge_input,), warmup_rounds=2, rounds=9)
    out = runs.run(benchmark)
    # Same order as the peer's: the stable merge by (pitr, feed rank).
    expected = heapq_merge(merge_input)
    assert [(e.pitr, e.feed == SURFACESTREAM) for e in out] == [(p, r == 1) for p, r, _ in expected]
    ratio = runs.compare(
        benchmark, merge_input.count, f"Combiner (batch {merge_input.batch})", "heapq.merge"
    )
    benchmark.extra_info.update(batch=merge_input.batch, target=MERGE_TARGET)
    assert ratio >= MERGE_TARGET, (
        f"Combiner throughput is {ratio:.2f}x heapq.merge's (target >= {MERGE_TARGET}x)"
    )


# --- (b) the file pipeline ---------------------------------------------------------


def _open(path: Path) -> IO[bytes]:
    if path.suffix == ".gz":
        return gzip.open(path, "rb")  # type: ignore[return-value]
    return path.open("rb")


def pitr_merge_baseline(control: Path, surface: Path, output: Path) -> None:
    """Decode only ``pitr`` (msgspec), merge the lines by (pitr, feed), write them."""
    with _open(control) as c, _open(surface) as s, output.open("wb") as out:
        keyed_control = ((decode_pitr(line).pitr, 0, line) for line in c if line.strip())
        keyed_surface = ((decode_pitr(line).pitr, 1, line) for line in s if line.strip())
        out.writelines(line for _, _, line in heapq.merge(keyed_control, keyed_surface))


def unifeed_file_pipeline(control: Path, surface: Path, output: Path) -> None:
    """``unifeed combine`` on files, in this process."""
    argv = ["combine", "--control", str(control), "--surface", str(surface)]
    code = unifeed_main([*argv, "--output", str(output), "--quiet"])
    assert code == 0


def _count_lines(path: Path) -> int:
    with _open(path) as f:
        return sum(1 for line in f if line.strip())


@pytest.fixture(scope="module")
def pipeline_input(busy_airport: tuple[Path, Path, str]) -> tuple[Path, Path, str, int]:
    control, surface, source = busy_airport
    return control, surface, source, _count_lines(control) + _count_lines(surface)


@pytest.mark.benchmark(group="file-pipeline")
def test_file_pipeline_vs_pitr_merge(
    benchmark: Any, pipeline_input: tuple[Path, Path, str, int], tmp_path: Path
) -> None:
    control, surface, source, count = pipeline_input
    # Same inputs, separate outputs: both write a file in the same directory.
    baseline_out = tmp_path / "baseline.jsonl"
    unified_out = tmp_path / "unified.jsonl"
    runs = Interleaved(
        lambda: pitr_merge_baseline(control, surface, baseline_out),
        lambda: unifeed_file_pipeline(control, surface, unified_out),
        (),
        warmup_rounds=2,
        rounds=11,
    )
    runs.run(benchmark)
    assert _count_lines(baseline_out) == count
    with unified_out.open("rb") as f:
        annotated = sum(
            1 for line in f if line.startswith(b'{"type":"ground_position"') and b',"id":' in line
        )
    assert annotated > 0
    ratio = runs.compare(benchmark, count, "file pipeline", "pitr-merge baseline")
    benchmark.extra_info.update(input=source, annotated=annotated, target=PIPELINE_TARGET)
    assert ratio >= PIPELINE_TARGET, (
        f"the file pipeline's throughput is {ratio:.2f}x the pitr-merge baseline's "
        f"(target >= {PIPELINE_TARGET}x)"
    )


# --- (c) the annotator stage -------------------------------------------------------

ANNOTATE_TARGET = 0.5
ANNOTATE_BATCH = 5000
ANNOTATE_LAPS = 8


@dataclass(frozen=True)
class AnnotateInput:
    """The busy-airport surfacestream as accepted messages and the mappings derived from its
    controlstream, in batches as the annotator thread gets them."""

    mappings: list[list[Mapping]]
    surface: list[list[Any]]
    #: Surface messages that are output (keepalives are not).
    count: int
    source: str


@pytest.fixture(scope="module")
def annotate_input(busy_airport: tuple[Path, Path, str]) -> AnnotateInput:
    control, surface, source = busy_airport

    def lines(path: Path) -> list[tuple[int, bytes]]:
        with _open(path) as f:
            return [(i, line.rstrip(b"\n")) for i, line in enumerate(f) if line.strip()]

    good_control, _ = FeedIntake(CONTROLSTREAM).process(lines(control))
    good_surface, _ = FeedIntake(SURFACESTREAM).process(lines(surface))
    deriver = MappingDeriver()
    mappings = [m for m in deriver.process_many([a.rec for a in good_control]) if type(m) is Mapping]
    step = ANNOTATE_BATCH
    return AnnotateInput(
        mappings=[mappings[i : i + step] for i in range(0, len(mappings), step)],
        surface=[good_surface[i : i + step] for i in range(0, len(good_surface), step)],
        count=len(good_surface) - len(good_surface.keepalive_at),
        source=source,
    )


def annotate_stage(data: AnnotateInput) -> list[Any]:
    """`AnnotateStage` fed as the annotator thread feeds it: a batch of mappings, a batch of
    surface messages, drain; ``ANNOTATE_LAPS`` times over, each lap a new stage."""
    out: list[Any] = []
    for _ in range(ANNOTATE_LAPS):
        out = []
        drive_annotate_stage(data.mappings, data.surface, out.extend)
    return [e.item for e in out]


def dict_splice(data: AnnotateInput) -> list[bytes]:
    """The least work of the same job: mappings and surface messages merged by (pitr,
    mappings first) with `heapq.merge`, links in a dict, each linked ground position's
    closing brace replaced by the flight's id and access; keepalives are not output."""
    out: list[bytes] = []
    for _ in range(ANNOTATE_LAPS):
        links: dict[str, bytes] = {}
        out = []
        append = out.append
        maps = ((m.pitr, 0, m) for batch in data.mappings for m in batch)
        surface = ((a.pitr, 1, a) for batch in data.surface for a in batch)
        for _, rank, x in heapq.merge(maps, surface, key=lambda t: (t[0], t[1])):
            if rank == 0:
                if x.action == "link":
                    links[x.surface_id] = b',"id":"%s","access":"%s"}' % (
                        x.id.encode(),
                        x.access.encode(),
                    )
                else:
                    links.pop(x.surface_id, None)
                continue
            raw = x.item
            kind = type(x.rec)
            if kind is GroundPosition:
                splice = links.get(x.rec.surface_id)
                if splice is not None:
                    raw = raw[:-1] + splice
            elif kind is Keepalive:
                continue
            append(raw)
    return out


@pytest.mark.benchmark(group="annotate")
def test_annotate_stage_vs_dict_splice(benchmark: Any, annotate_input: AnnotateInput) -> None:
    runs = Interleaved(dict_splice, annotate_stage, (annotate_input,), warmup_rounds=2, rounds=11)
    out = runs.run(benchmark)
    expected = dict_splice(annotate_input)
    assert len(out) == len(expected) == annotate_input.count
    # The same bytes: the inputs name no id or access of their own and no link expires.
    assert out == expected
    ratio = runs.compare(
        benchmark, annotate_input.count * ANNOTATE_LAPS, "AnnotateStage", "dict splice"
    )
    benchmark.extra_info.update(input=annotate_input.source, target=ANNOTATE_TARGET)
    assert ratio >= ANNOTATE_TARGET, (
        f"the annotator stage's throughput is {ratio:.2f}x the dict splice's "
        f"(target >= {ANNOTATE_TARGET}x)"
    )
