"""Packaging: license, metadata, extras, typing settings and the sdist's contents."""

from __future__ import annotations

import ast
import importlib.metadata
import importlib.util
import re
import sys
import tomllib
from pathlib import Path

import unifeed

ROOT = Path(__file__).resolve().parent.parent
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_license_file_is_the_apache_license_the_metadata_names() -> None:
    project = PROJECT["project"]
    assert project["license"] == "Apache-2.0" and project["license-files"] == ["LICENSE"]
    text = (ROOT / "LICENSE").read_text()
    assert "Apache License" in text and "Version 2.0, January 2004" in text
    assert "END OF TERMS AND CONDITIONS" in text and "9. Accepting Warranty" in text
    # PEP 639: a license expression replaces the License :: classifiers
    assert not [c for c in project["classifiers"] if c.startswith("License ::")]


def test_metadata_has_classifiers_and_keywords() -> None:
    project = PROJECT["project"]
    assert "Typing :: Typed" in project["classifiers"] and (ROOT / "unifeed/py.typed").exists()
    python = {c for c in project["classifiers"] if re.fullmatch(r".*Python :: 3\.\d+", c)}
    assert "Programming Language :: Python :: 3.11" in python  # requires-python's floor
    assert "kafka" in project["keywords"]


def test_the_version_has_one_source() -> None:
    assert "version" not in PROJECT["project"].get("dynamic", [])
    assert unifeed.__version__ == PROJECT["project"]["version"] == importlib.metadata.version(
        "unifeed"
    )
    for path in (ROOT / "unifeed").rglob("*.py"):
        assert PROJECT["project"]["version"] not in path.read_text(), path


def test_test_and_dev_extras_are_split_and_test_covers_what_the_tests_import() -> None:
    extras = PROJECT["project"]["optional-dependencies"]
    names = {k: {re.split(r"[<>=\[ ]", r)[0].lower() for r in v} for k, v in extras.items()}
    assert not {"mypy", "ruff"} & names["test"]
    assert {"mypy", "ruff", "unifeed"} <= names["dev"]
    # every third-party module a test imports comes with the package or its test extra
    installed = {
        re.split(r"[<>=\[ ]", r)[0].lower().replace("-", "_")
        for r in [*PROJECT["project"]["dependencies"], *extras["test"]]
    }
    aliases = {"confluent_kafka": "confluent_kafka", "yaml": "pyyaml", "docker": "testcontainers",
               "testcontainers": "testcontainers", "importlinter": "import_linter"}  # fmt: skip
    for path in [*ROOT.glob("tests/**/*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            modules = []
            if isinstance(node, ast.Import):
                modules = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules = [node.module]
            for module in modules:
                top = module.split(".")[0]
                if top in sys.stdlib_module_names or top in ("tests", "unifeed", "_pytest"):
                    continue
                assert aliases.get(top, top) in installed, f"{path.name} imports {top}"


def test_no_stale_ignore_missing_imports() -> None:
    """A mypy override that ignores missing imports only for packages without types."""
    for override in PROJECT["tool"]["mypy"].get("overrides", []):
        if not override.get("ignore_missing_imports"):
            continue
        for module in override["module"]:
            name = module.removesuffix(".*")
            spec = importlib.util.find_spec(name)
            assert spec is None or not spec.submodule_search_locations or not any(
                (Path(p) / "py.typed").exists() for p in spec.submodule_search_locations
            ), f"{name} ships types: drop it from ignore_missing_imports"


def test_sdist_carries_what_the_tests_read() -> None:
    manifest = (ROOT / "MANIFEST.in").read_text().split("\n")
    grafts = {line.split()[1] for line in manifest if line.startswith("graft ")}
    included = {w for line in manifest if line.startswith("include ") for w in line.split()[1:]}
    assert {"tests", "golden", "docs"} <= grafts
    # files outside the grafted folders that a test opens through ROOT
    for path in ROOT.glob("tests/**/*.py"):
        if path.name == "test_packaging.py":
            continue  # its own pattern below is no path
        for name in re.findall(r'ROOT / "([^"]+)"(?: / "([^"]+)")?', path.read_text()):
            top = name[0]
            if top.split("/")[0] in {*grafts, "unifeed"} or top in ("pyproject.toml", "MANIFEST.in"):
                continue
            joined = "/".join(n for n in name if n)
            assert joined in included or top in included, f"{path.name} reads {joined}"
