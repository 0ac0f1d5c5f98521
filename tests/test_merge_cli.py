"""`unifeed merge` through the real command line, and its golden scenario.

`pytest --update-golden` rewrites ``golden/merge-three-feeds/`` from the builder in
tests/support/golden_scenarios.py; the expected output is also checked against the
independent model in tests/support/reference.py on every run.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterable
from contextlib import ExitStack
from pathlib import Path
from typing import IO

import pytest

from tests.support.golden import GOLDEN, read_lines, write_lines
from tests.support.golden_scenarios import MERGE_COMPRESSED, MERGE_SCENARIOS
from tests.support.kafkatools import run_cli
from tests.support.reference import reference_merge
from unifeed import merge_lines


def input_path(scenario: str, name: str) -> Path:
    suffix = ".jsonl.gz" if (scenario, name) in MERGE_COMPRESSED else ".jsonl"
    return GOLDEN / scenario / (name + suffix)


def expected_path(scenario: str, stem: str) -> Path:
    return GOLDEN / scenario / f"expected.{stem}.jsonl"


def _open(path: Path) -> IO[bytes]:
    return gzip.open(path, "rb") if path.suffix == ".gz" else path.open("rb")  # type: ignore[return-value]


def _stored_inputs(scenario: str, stack: ExitStack, names: Iterable[str]) -> dict[str, IO[bytes]]:
    return {n: stack.enter_context(_open(input_path(scenario, n))) for n in names}


@pytest.mark.parametrize("scenario", list(MERGE_SCENARIOS))
def test_golden_merge_python_api(scenario: str, update_golden: bool) -> None:
    inputs = MERGE_SCENARIOS[scenario]()
    if update_golden:
        for name, lines in inputs.items():
            write_lines(input_path(scenario, name), lines)
        with ExitStack() as stack:
            out, stats = merge_lines(_stored_inputs(scenario, stack, inputs))
        write_lines(expected_path(scenario, "merged"), out)
        write_lines(expected_path(scenario, "dead-letters"), [d.encode() for d in stats.dead_letters])
    for name, lines in inputs.items():
        stored = input_path(scenario, name).read_bytes()
        if stored[:2] == b"\x1f\x8b":
            stored = gzip.decompress(stored)
        assert stored == b"".join(line + b"\n" for line in lines), (
            f"golden/{scenario}/{name} is stale: run `pytest --update-golden` and review"
        )
    with ExitStack() as stack:
        out, stats = merge_lines(_stored_inputs(scenario, stack, inputs))
    expected = read_lines(expected_path(scenario, "merged"))
    assert out == expected, f"golden/{scenario} differs from merge_lines (--update-golden?)"
    assert [d.encode() for d in stats.dead_letters] == read_lines(
        expected_path(scenario, "dead-letters")
    )
    # The golden output is what the rules define: the independent model agrees.
    with ExitStack() as stack:
        model_in = {n: list(f) for n, f in _stored_inputs(scenario, stack, inputs).items()}
    model_out, model_dead = reference_merge(model_in)
    assert expected == model_out
    assert sorted((d.feed, d.line) for d in stats.dead_letters) == sorted(model_dead)


def test_merge_three_feeds_has_what_it_claims() -> None:
    """Ties across feeds and within one, keepalives and bad lines in every feed."""
    merged = [json.loads(x) for x in read_lines(expected_path("merge-three-feeds", "merged"))]
    pitrs = [m["pitr"] for m in merged]
    assert pitrs == sorted(pitrs)
    ties = [p for p in set(pitrs) if pitrs.count(p) >= 3]
    assert len(ties) >= 5
    assert not any(m.get("type") == "keepalive" for m in merged)
    letters = [json.loads(x) for x in read_lines(expected_path("merge-three-feeds", "dead-letters"))]
    assert {d["feed"] for d in letters} == {"radar", "adsb", "mlat"}
    assert any("raw_b64" in d for d in letters)
    first_tie = min(ties)
    at_tie = [m for m in merged if m["pitr"] == first_tie]
    # rank order: radar (track), adsb (hex), mlat (type mlat_fix)
    assert "track" in at_tie[0] and "hex" in at_tie[1] and at_tie[-1]["type"] == "mlat_fix"


@pytest.mark.parametrize("scenario", list(MERGE_SCENARIOS))
def test_golden_merge_cli(scenario: str, tmp_path: Path) -> None:
    names = list(MERGE_SCENARIOS[scenario]())
    out = tmp_path / "merged.jsonl"
    dead = tmp_path / "dead.jsonl"
    args = ["merge", "--output", str(out), "--dead-letter", str(dead)]
    for name in names:
        args += ["--input", f"{name}={input_path(scenario, name)}"]
    done = run_cli(args)
    assert done.returncode == 0, done.stderr.decode()
    assert out.read_bytes().splitlines() == read_lines(expected_path(scenario, "merged"))
    assert dead.read_bytes().splitlines() == read_lines(expected_path(scenario, "dead-letters"))
    summary = done.stderr.decode()
    assert summary.startswith("unifeed merge: ") and "dead letters" in summary


def _write(path: Path, lines: list[bytes]) -> str:
    path.write_bytes(b"".join(line + b"\n" for line in lines))
    return str(path)


@pytest.fixture
def two_files(tmp_path: Path) -> tuple[str, str]:
    a = _write(tmp_path / "a.jsonl", [b'{"pitr":1,"f":"a"}', b'{"pitr":3,"f":"a"}'])
    b = _write(tmp_path / "b.jsonl", [b'{"pitr":2,"f":"b"}', b'{"pitr":3,"f":"b"}'])
    return a, b


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--input", "a=A", "--input", "a=B"], "--input name 'a' is given twice"),
        (["--input", "noequals"], "--input expects NAME=SOURCE"),
        (["--input", "=x.jsonl"], "NAME must be letters, digits"),
        (["--input", "a b=x.jsonl"], "NAME must be letters, digits"),
        (["--input", "a=A", "--live-required", "a,zz"], "--live-required names 'zz', which is no --input"),
        (["--input", "a=A", "--reorder", "zz:clock:2s"], "--reorder names 'zz'"),
        (["--input", "a=A", "--reorder", "a:clock"], "--reorder expects NAME:FIELD:WINDOW"),
        (["--input", "a=kafka:radar"], "mix of kafka: and file arguments"),
        (["--input", "a=kafka:radar", "--input", "b=B"], "mix of kafka: and file arguments"),
        (["--input", "a=-", "--input", "b=-"], "only one can"),
        (["--input", "a=A", "--start", "latest"], "--start latest needs Kafka inputs"),
        (["--input", "a=A", "--start", "5", "--stop-at", "4"], "--stop-at 4 is before --start 5"),
        (["--input", "a=A", "--start", "yesterday"], "--start must be epoch milliseconds"),
        ([], "give at least one --input"),
    ],
)
def test_bad_arguments_exit_2_with_one_line(
    extra: list[str], message: str, two_files: tuple[str, str], tmp_path: Path
) -> None:
    args = [x.replace("=A", f"={two_files[0]}").replace("=B", f"={two_files[1]}") for x in extra]
    done = run_cli(["merge", "--output", str(tmp_path / "o.jsonl"), *args])
    assert done.returncode == 2, done.stderr.decode()
    lines = done.stderr.decode().strip().splitlines()
    assert len(lines) == 1 and message in lines[0], lines
    assert not (tmp_path / "o.jsonl").exists() or message.startswith("mix")


def test_output_that_is_an_input_is_refused(two_files: tuple[str, str]) -> None:
    a, b = two_files
    before = Path(a).read_bytes()
    done = run_cli(["merge", "--input", f"a={a}", "--input", f"b={b}", "--output", a])
    assert done.returncode == 2 and b"is input 'a'" in done.stderr
    assert Path(a).read_bytes() == before


def test_stdin_gz_and_the_order_of_inputs_is_the_tie_break(
    two_files: tuple[str, str], tmp_path: Path
) -> None:
    a, b = two_files
    gz = tmp_path / "b.jsonl.gz"
    gz.write_bytes(gzip.compress(Path(b).read_bytes()))
    done = run_cli(["merge", "--input", f"b={gz}", "--input", "a=-", "--output", "-", "-q"],
                   input=Path(a).read_bytes())
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        b'{"pitr":1,"f":"a"}', b'{"pitr":2,"f":"b"}', b'{"pitr":3,"f":"b"}', b'{"pitr":3,"f":"a"}'
    ]
    assert done.stderr == b""


def test_max_dead_letters_exits_4(tmp_path: Path) -> None:
    a = _write(tmp_path / "a.jsonl", [b'{"pitr":5}', b"bad", b'{"pitr":1}', b'{"pitr":6}'])
    done = run_cli(["merge", "--input", f"a={a}", "--output", str(tmp_path / "o.jsonl"),
                    "--dead-letter", str(tmp_path / "d.jsonl"), "--max-dead-letters", "1"])
    assert done.returncode == 4, done.stderr
    assert b"2 dead letters exceed --max-dead-letters 1" in done.stderr
    letters = [json.loads(x) for x in (tmp_path / "d.jsonl").read_bytes().splitlines()]
    assert [(d["feed"], d["line"]) for d in letters] == [("a", 2), ("a", 3)]


def test_start_stop_at_and_reorder(tmp_path: Path) -> None:
    a = _write(tmp_path / "a.jsonl", [b'{"pitr":1000,"clock":990}', b'{"pitr":1100,"clock":980}',
                                       b'{"pitr":5000,"clock":4990}'])
    b = _write(tmp_path / "b.jsonl", [b'{"pitr":1000,"f":"b"}', b'{"pitr":9000,"f":"b"}'])
    done = run_cli(["merge", "--input", f"a={a}", "--input", f"b={b}", "--output", "-", "-q",
                    "--start", "1000", "--stop-at", "1970-01-01T00:00:05Z"])
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        b'{"pitr":1000,"clock":990}', b'{"pitr":1000,"f":"b"}', b'{"pitr":1100,"clock":980}',
        b'{"pitr":5000,"clock":4990}',
    ]
    # Reordered by clock, the second line of a comes first and the first one steps back:
    # it is dead-lettered, as any record below its input's previous pitr.
    done = run_cli(["merge", "--input", f"a={a}", "--output", "-", "-q", "--reorder",
                    "a:clock:500ms", "--dead-letter", str(tmp_path / "d.jsonl")])
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [b'{"pitr":1100,"clock":980}', b'{"pitr":5000,"clock":4990}']
    (letter,) = [json.loads(x) for x in (tmp_path / "d.jsonl").read_bytes().splitlines()]
    assert letter["raw"] == '{"pitr":1000,"clock":990}'


def test_inputs_from_a_config_file_and_the_command_line_replaces_them(
    two_files: tuple[str, str], tmp_path: Path
) -> None:
    a, b = two_files
    config = tmp_path / "unifeed.toml"
    config.write_text(f'[merge]\ninput = ["a={a}", "b={b}"]\nlive_required = "a,b"\n')
    done = run_cli(["merge", "--config", str(config), "--output", "-", "-q"])
    assert done.returncode == 0, done.stderr
    assert len(done.stdout.splitlines()) == 4
    done = run_cli(["merge", "--config", str(config), "--input", f"b={b}", "--output", "-", "-q"])
    assert done.returncode == 2  # a is no longer an input, so live_required names it wrongly
    assert b"--live-required names 'a'" in done.stderr
    done = run_cli(["merge", "--config", str(config), "--input", f"b={b}", "--live-required",
                    "b", "--output", "-", "-q"])
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [b'{"pitr":2,"f":"b"}', b'{"pitr":3,"f":"b"}']
