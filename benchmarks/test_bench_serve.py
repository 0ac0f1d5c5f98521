"""unifeed serve: viewport updates against a full broadcast measured in the same run.

The subject and its peer are WebSocket clients of one server in one run
(`benchmarks/serve_ws.py`): 100 clients watching ~10% of 9,000 aircraft each, 5 watching
the whole map. Asserted: viewport bytes <= 15% of the full broadcast's, and the serve
process's CPU below one core. Delays are recorded, not asserted (they depend on what
else the machine runs; benchmarks/README.md).
"""

from __future__ import annotations

from typing import Any

import pytest

from benchmarks import serve_ws

pytestmark = pytest.mark.serve_bench
BYTES_TARGET = 0.15


def test_serve_viewport_vs_full_broadcast(benchmark: Any) -> None:
    result: dict[str, Any] = benchmark.pedantic(
        serve_ws.run, args=(["--seconds", "20", "--warmup", "8", "--port", "18768"],),
        rounds=1, iterations=1,
    )
    benchmark.extra_info.update(result)
    assert result["ratio_viewport_to_full"] <= BYTES_TARGET
    assert result["serve_cpu_s_per_s"] < 1.0
    assert result["dropped_clients"] == 0
