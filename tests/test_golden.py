"""Golden scenarios through the file pipeline: the Python API and `unifeed combine`.

`pytest --update-golden` rewrites ``golden/<scenario>/`` from the builders in
``tests/golden_scenarios.py``; review the diff. Every expected output is also checked
against the independent model in ``tests/reference.py``.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.golden import FILES, golden_path, read_lines, write_lines
from tests.support.golden_scenarios import SCENARIOS
from tests.support.reference import assert_matches_reference, reference_unified
from unifeed import unify_lines
from unifeed.core.unify import derive_mapping_lines


def compute(control: list[bytes], surface: list[bytes]) -> dict[str, list[bytes]]:
    out, run = unify_lines(control, surface)
    mapping, _ = derive_mapping_lines(control)
    return {
        "expected.unified": out,
        "expected.mappingstream": mapping,
        "expected.dead-letters": [d.encode() for d in run.dead_letters],
    }


@pytest.fixture
def update_golden_flag(request: pytest.FixtureRequest) -> bool:
    return bool(request.config.getoption("--update-golden", default=False))


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_golden_python_api(name: str, update_golden_flag: bool) -> None:
    control, surface = SCENARIOS[name]()
    if update_golden_flag:
        write_lines(golden_path(name, "controlstream"), control)
        write_lines(golden_path(name, "surfacestream"), surface)
        for stem, lines in compute(control, surface).items():
            write_lines(golden_path(name, stem), lines)
    for stem in FILES:
        assert golden_path(name, stem).exists(), (
            f"{golden_path(name, stem)} is missing: run `pytest --update-golden` and review"
        )
    stored_control = read_lines(golden_path(name, "controlstream"))
    stored_surface = read_lines(golden_path(name, "surfacestream"))
    assert (stored_control, stored_surface) == (control, surface), (
        f"golden/{name} inputs are stale: run `pytest --update-golden` and review the diff"
    )
    got = compute(stored_control, stored_surface)
    for stem, lines in got.items():
        assert lines == read_lines(golden_path(name, stem)), (
            f"golden/{name}/{stem} differs from the pipeline's output "
            "(if the change is intended: `pytest --update-golden`, then review the diff)"
        )
    # The golden output itself must be what the spec defines.
    expected = read_lines(golden_path(name, "expected.unified"))
    assert_matches_reference(expected, reference_unified(stored_control, stored_surface))


def test_busy_airport_is_big_enough() -> None:
    control = read_lines(golden_path("busy-airport", "controlstream"))
    surface = read_lines(golden_path("busy-airport", "surfacestream"))
    assert len(control) + len(surface) >= 50_000


def test_bad_input_scenario_dead_letters_every_bad_line() -> None:
    letters = [json.loads(x) for x in read_lines(golden_path("bad-input", "expected.dead-letters"))]
    assert len(letters) == 12  # 8 in controlstream, 4 in surfacestream
    assert {d["feed"] for d in letters} == {"controlstream", "surfacestream"}
    assert all(d["reason"] and "line" in d and ("raw" in d or "raw_b64" in d) for d in letters)


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_golden_cli(name: str, tmp_path: Path) -> None:
    out = tmp_path / "unified.jsonl"
    dead = tmp_path / "dead.jsonl"
    mapping = tmp_path / "mapping.jsonl"
    control = str(golden_path(name, "controlstream"))
    surface = str(golden_path(name, "surfacestream"))
    cli = [sys.executable, "-m", "unifeed"]
    done = subprocess.run(
        [*cli, "combine", "--control", control, "--surface", surface, "--output", str(out),
         "--dead-letter", str(dead)],
        capture_output=True, timeout=120, check=False,
    )
    assert done.returncode == 0, done.stderr.decode()
    assert out.read_bytes().splitlines() == read_lines(golden_path(name, "expected.unified"))
    assert dead.read_bytes().splitlines() == read_lines(golden_path(name, "expected.dead-letters"))
    done = subprocess.run(
        [*cli, "mappings", "--control", control, "--output", str(mapping), "-q",
         "--dead-letter", str(tmp_path / "dead2.jsonl")],
        capture_output=True, timeout=120, check=False,
    )
    assert done.returncode == 0, done.stderr.decode()
    assert mapping.read_bytes().splitlines() == read_lines(
        golden_path(name, "expected.mappingstream")
    )
    # The same run with an explicit mappingstream input gives the same unified feed.
    out2 = tmp_path / "unified2.jsonl"
    done = subprocess.run(
        [*cli, "combine", "--control", control, "--surface", surface, "--mapping", str(mapping),
         "--output", str(out2), "-q", "--dead-letter", str(tmp_path / "dead3.jsonl")],
        capture_output=True, timeout=120, check=False,
    )
    assert done.returncode == 0, done.stderr.decode()
    assert out2.read_bytes() == out.read_bytes()
