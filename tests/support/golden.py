"""Golden files: where a scenario's files live and how they are read and written."""

from __future__ import annotations

import gzip
from pathlib import Path

from tests.support.golden_scenarios import COMPRESSED

GOLDEN = Path(__file__).resolve().parents[2] / "golden"
FILES = ("controlstream", "surfacestream", "expected.mappingstream", "expected.unified",
         "expected.dead-letters")


def golden_path(name: str, stem: str) -> Path:
    suffix = ".jsonl.gz" if name in COMPRESSED and stem != "expected.dead-letters" else ".jsonl"
    return GOLDEN / name / (stem + suffix)


def read_lines(path: Path) -> list[bytes]:
    data = path.read_bytes()
    if path.suffix == ".gz":
        data = gzip.decompress(data)
    return data.splitlines()


def write_lines(path: Path, lines: list[bytes]) -> None:
    data = b"".join(line + b"\n" for line in lines)
    if path.suffix == ".gz":
        data = gzip.compress(data, compresslevel=9, mtime=0)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
