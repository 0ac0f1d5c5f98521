"""The layer rule holds: imports point down only, and ``import unifeed`` stays light."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_import_unifeed_loads_no_kafka_client_and_no_threads() -> None:
    code = (
        "import sys, unifeed\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in "
        "('confluent_kafka', 'threading', 'fastapi', 'starlette', 'uvicorn', 'redis', "
        "'psycopg', 'argparse'))\n"
        "print(','.join(heavy))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == "", f"import unifeed loaded: {out.stdout.strip()}"


def test_import_contract_is_kept() -> None:
    """import-linter's layered contract in pyproject.toml (cli > demo > runtime|sim > ...)."""
    exe = shutil.which("lint-imports", path=str(Path(sys.executable).parent))
    assert exe is not None, "lint-imports is part of the test extra"
    result = subprocess.run(
        [exe, "--config", str(ROOT / "pyproject.toml")],
        capture_output=True, text=True, cwd=ROOT, timeout=120,
    )
    assert result.returncode == 0, result.stdout[-3000:]


def test_public_api_is_pinned() -> None:
    """The names `import unifeed` offers: the core and every error a caller can meet."""
    import unifeed

    assert sorted(unifeed.__all__) == sorted([
        "Annotator", "BadRecordError", "BrokerUnreachableError", "CheckpointError",
        "Combiner", "CombinerStats", "ConfigError", "DeadLetter", "DeadLetterLimitError",
        "Emitted", "Feed", "FeedOrderError", "InstanceFencedError", "KafkaRuntimeError",
        "MappingDeriver", "MergeStats", "Merger", "Mode", "PartitionChangeError", "StartRefusedError", "UnifeedError", "Unifier", "__version__", "merge_lines", "unify_lines",
    ])
    for name in unifeed.__all__:
        assert getattr(unifeed, name) is not None
    errors = [getattr(unifeed, n) for n in unifeed.__all__ if n.endswith("Error")]
    assert all(issubclass(e, unifeed.UnifeedError) for e in errors)
    from unifeed.core import errors as module

    declared = {n for n, v in vars(module).items() if isinstance(v, type) and issubclass(v, Exception)}
    assert declared <= set(unifeed.__all__), declared - set(unifeed.__all__)
