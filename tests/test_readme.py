"""The README's library example and the package tour run as written."""

from __future__ import annotations

import doctest
import importlib
import pkgutil
import re
from pathlib import Path

import unifeed

ROOT = Path(__file__).resolve().parent.parent


def test_readme_library_example_runs() -> None:
    result = doctest.testfile(str(ROOT / "README.md"), module_relative=False,
                              optionflags=doctest.ELLIPSIS)
    assert result.attempted >= 8
    assert result.failed == 0


def test_package_tour_runs() -> None:
    result = doctest.testmod(unifeed)
    assert result.attempted >= 5
    assert result.failed == 0


def test_every_modules_examples_run() -> None:
    """The ``>>>`` examples in every module's docstrings are true (they document behaviour)."""
    attempted = 0
    for info in pkgutil.walk_packages(unifeed.__path__, "unifeed."):  # subpackages too
        result = doctest.testmod(importlib.import_module(info.name), optionflags=doctest.ELLIPSIS)
        assert result.failed == 0, info.name
        attempted += result.attempted
    assert attempted >= 25


def test_readme_starts_with_the_two_commands_ci_runs() -> None:
    text = (ROOT / "README.md").read_text()
    block = re.search(r"```sh\n(.*?)```", text, re.S)
    assert block is not None and text.index("```sh") < 200
    lines = block.group(1).strip().splitlines()
    assert len(lines) == 2
    assert lines[0].endswith("unifeed demo") and "pytest" in lines[1]
    assert lines[1] in (ROOT / ".ci" / "run").read_text() or "grep -m1" in (
        ROOT / ".ci" / "run"
    ).read_text()


def test_guarantees_page_names_only_tests_that_exist() -> None:
    text = (ROOT / "docs" / "guarantees.md").read_text()
    cited = set(re.findall(r"`(tests/[\w/]+\.py)::(\w+)", text))
    assert len(cited) >= 30
    missing = [f"{f}::{t}" for f, t in cited if f"def {t}(" not in (ROOT / f).read_text()]
    assert missing == []
