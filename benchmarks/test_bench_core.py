"""In-process benchmarks: the combining rule, and the file pipeline, each against a peer.

(a) `Combiner` vs `heapq.merge` on the same pre-decoded messages of two feeds (2:1 rates):
    the Combiner is fed as the runtime feeds it (`push_many` batches from the feed that lags,
    `drain_list` after each) with a clock far in the future (catch-up).
    Target: Combiner throughput >= 0.4x heapq.merge's.
(b) ``unifeed combine`` on the busy-airport files (validate, derive mappings, annotate,
    combine twice, write) vs a baseline that decodes only ``pitr`` and `heapq.merge`s the
    lines into a file. Target: pipeline throughput >= 0.5x the baseline's.
"""

from __future__ import annotations

import gzip
import heapq
from pathlib import Path
from typing import IO, Any

import pytest

from benchmarks._data import FAR_FUTURE_MS, TwoFeedInput, decode_pitr, two_feed_merge_input
from benchmarks._options import BenchOptions
from benchmarks._peers import Interleaved
from unifeed import Combiner, Feed
from unifeed.cli.main import main as unifeed_main
from unifeed.core.records import CONTROLSTREAM, SURFACESTREAM

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
