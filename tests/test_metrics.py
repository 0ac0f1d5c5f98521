"""`MetricsServer`: scraped over HTTP on 127.0.0.1, names, values and labels as documented."""

from __future__ import annotations

import socket
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest
from prometheus_client.parser import text_string_to_metric_families

from unifeed import ConfigError
from unifeed.runtime.metrics import MetricsServer, MetricsSnapshot, snapshot_from_counters

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(server: MetricsServer) -> tuple[str, Samples]:
    with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/metrics", timeout=5) as reply:
        assert reply.status == 200
        text: str = reply.read().decode()
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return text, samples


@pytest.fixture
def snapshot_box() -> list[MetricsSnapshot]:
    return [
        MetricsSnapshot(
            messages_in={"controlstream": 120, "surfacestream": 80},
            messages_out=190,
            dead_letters={"not-json": 2, "out-of-order": 1},
            unmapped=4,
            annotated=36,
            late=3,
            mode="catchup",
            lag_ms={"controlstream": 1500, "surfacestream": 250},
            queue_depth={"writer.controlstream": 2, "annotator.surfacestream": 5},
            checkpoint_commits=11,
            transaction_aborts=1,
        )
    ]


@pytest.fixture
def server(snapshot_box: list[MetricsSnapshot]) -> Iterator[MetricsServer]:
    s = MetricsServer(0, lambda: snapshot_box[0], command="combine", instance="uf-a")
    s.start()
    try:
        yield s
    finally:
        s.close()


def test_counters_gauges_and_labels(server: MetricsServer) -> None:
    text, samples = scrape(server)
    assert server.port > 0
    assert samples[("unifeed_messages_in_total", (("feed", "controlstream"),))] == 120
    assert samples[("unifeed_messages_in_total", (("feed", "surfacestream"),))] == 80
    assert samples[("unifeed_messages_out_total", ())] == 190
    assert samples[("unifeed_dead_letters_total", (("reason", "not-json"),))] == 2
    assert samples[("unifeed_dead_letters_total", (("reason", "out-of-order"),))] == 1
    assert samples[("unifeed_unmapped_total", ())] == 4
    assert samples[("unifeed_annotated_total", ())] == 36
    assert samples[("unifeed_late_total", ())] == 3
    assert samples[("unifeed_checkpoint_commits_total", ())] == 11
    assert samples[("unifeed_transaction_aborts_total", ())] == 1
    assert samples[("unifeed_lag_seconds", (("feed", "controlstream"),))] == 1.5
    assert samples[("unifeed_lag_seconds", (("feed", "surfacestream"),))] == 0.25
    assert samples[("unifeed_queue_depth", (("queue", "annotator.surfacestream"),))] == 5
    assert samples[("unifeed_queue_depth", (("queue", "writer.controlstream"),))] == 2
    # Mode is one-hot over every known mode.
    assert samples[("unifeed_mode", (("mode", "catchup"),))] == 1
    assert samples[("unifeed_mode", (("mode", "realtime"),))] == 0
    assert samples[("unifeed_mode", (("mode", "starting"),))] == 0
    info = [k for k in samples if k[0] == "unifeed_info"]
    assert len(info) == 1
    labels = dict(info[0][1])
    assert labels["command"] == "combine"
    assert labels["unifeed_instance"] == "uf-a"
    assert labels["version"]
    # Types as Prometheus sees them, and nothing from the default registry.
    assert "# TYPE unifeed_messages_out_total counter" in text
    assert "# TYPE unifeed_lag_seconds gauge" in text
    assert "process_cpu_seconds_total" not in text
    assert "python_gc" not in text


def test_values_are_read_at_scrape_time(
    server: MetricsServer, snapshot_box: list[MetricsSnapshot]
) -> None:
    _, before = scrape(server)
    snapshot_box[0] = MetricsSnapshot(messages_out=191, mode="realtime")
    _, after = scrape(server)
    assert before[("unifeed_messages_out_total", ())] == 190
    assert after[("unifeed_messages_out_total", ())] == 191
    assert after[("unifeed_mode", (("mode", "realtime"),))] == 1
    assert after[("unifeed_mode", (("mode", "catchup"),))] == 0


def _non_loopback_address() -> str | None:
    """An IPv4 address of this host that is not loopback, if it has one (no packet sent)."""
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        probe.connect(("10.255.255.255", 1))
        address: str = probe.getsockname()[0]
    except OSError:
        return None
    finally:
        probe.close()
    return None if address.startswith("127.") else address


def test_serves_on_loopback_only(server: MetricsServer) -> None:
    assert server.url == f"http://127.0.0.1:{server.port}/metrics"
    other = _non_loopback_address()
    if other is None:
        pytest.skip("this host has no non-loopback IPv4 address to probe")
    with pytest.raises(OSError):
        socket.create_connection((other, server.port), timeout=2).close()


def test_port_in_use_is_a_config_error(server: MetricsServer) -> None:
    clash = MetricsServer(server.port, MetricsSnapshot, command="combine", instance="uf-b")
    with pytest.raises(ConfigError, match="--metrics-port"):
        clash.start()
    clash.close()


def test_failing_collect_fails_the_scrape_not_the_server() -> None:
    calls = [0]

    def collect() -> MetricsSnapshot:
        calls[0] += 1
        if calls[0] == 1:
            raise RuntimeError("state not ready")
        return MetricsSnapshot(messages_out=1)

    with MetricsServer(0, collect, command="mappings", instance="m") as s:
        with pytest.raises(urllib.error.HTTPError) as caught:
            scrape(s)
        assert caught.value.code == 500
        _, samples = scrape(s)
        assert samples[("unifeed_messages_out_total", ())] == 1


def test_close_frees_the_port() -> None:
    s = MetricsServer(0, MetricsSnapshot, command="combine", instance="x")
    s.start()
    port = s.port
    s.close()
    s.close()  # idempotent
    again = MetricsServer(port, MetricsSnapshot, command="combine", instance="x")
    again.start()
    again.close()


def test_bad_port_is_refused() -> None:
    with pytest.raises(ConfigError, match="between 0 and 65535"):
        MetricsServer(70000, MetricsSnapshot, command="combine", instance="x")


def test_metrics_host_is_bound_and_a_foreign_address_is_a_config_error() -> None:
    with MetricsServer(0, MetricsSnapshot, command="combine", instance="x",
                       host="127.0.0.1") as s:
        assert s.url == f"http://127.0.0.1:{s.port}/metrics"
        scrape(s)
    # 192.0.2.1 (TEST-NET-1) is no address of this machine: binding fails locally, nothing
    # is sent anywhere.
    far = MetricsServer(0, MetricsSnapshot, command="combine", instance="x", host="192.0.2.1")
    with pytest.raises(ConfigError, match=r"cannot serve metrics on 192\.0\.2\.1:0.*--metrics-host"):
        far.start()


def test_snapshot_from_runtime_counters() -> None:
    s = snapshot_from_counters(
        {
            "in.controlstream": 10,
            "in.surfacestream": 7,
            "out": 16,
            "dead_letters": 1,
            "late": 2,
            "annotated": 3,
            "unmapped": 1,
            "commits": 4,
            "reconciled": 9,
        },
        lag_pitr={"controlstream": 9_000, "surfacestream": 10_500},
        mode="realtime",
        now_ms=10_000,
        queue_depth={"writer.controlstream": 1},
    )
    assert s.messages_in == {"controlstream": 10, "surfacestream": 7}
    assert s.messages_out == 16
    assert s.dead_letters == {"invalid": 1}
    assert (s.late, s.annotated, s.unmapped, s.checkpoint_commits) == (2, 3, 1, 4)
    assert s.lag_ms == {"controlstream": 1000, "surfacestream": 0}  # never negative
    assert s.queue_depth == {"writer.controlstream": 1}


def test_ipv6_addresses_work() -> None:
    """``--metrics-host ::1`` binds IPv6 (the server picks the address family)."""
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        pytest.skip("this host has no IPv6 loopback")
    with MetricsServer(0, lambda: MetricsSnapshot(messages_out=3), command="combine",
                       instance="v6", host="::1") as server:  # fmt: skip
        assert server.url.startswith("http://[::1]:")
        with urllib.request.urlopen(server.url, timeout=10) as reply:
            assert "unifeed_messages_out_total 3.0" in reply.read().decode()


def test_metric_names_in_the_docs_are_the_exported_ones() -> None:
    """Every ``unifeed_*`` metric name in README.md and docs/*.md is one a scrape shows
    (a counter may be named with or without ``_total``), and every exported family is
    documented in unifeed.runtime.metrics. ``unifeed serve``'s own families count as
    exported too."""
    import re
    from pathlib import Path

    import unifeed.runtime.metrics as metrics

    snapshot = MetricsSnapshot(
        messages_in={"controlstream": 1}, messages_out=1, dead_letters={"bad json": 1},
        lag_ms={"controlstream": 1}, queue_depth={"writer": 1},
    )  # fmt: skip
    with MetricsServer(0, lambda: snapshot, command="combine", instance="doc") as server:
        text = _fetch(server.url)
    families = {f.name for f in text_string_to_metric_families(text)}
    exported = families | {f"{name}_total" for name in families}
    serve_families = {f.name for f in text_string_to_metric_families(_serve_metrics_text())}
    exported |= serve_families | {f"{name}_total" for name in serve_families}
    root = Path(__file__).resolve().parent.parent
    pages = [root / "README.md", *sorted((root / "docs").glob("*.md"))]
    named = re.compile(r"\bunifeed_[a-z_]+\b")
    # a label of unifeed_info; serve's PostgreSQL history tables
    not_metrics = {"unifeed_instance", "unifeed_positions", "unifeed_history_progress"}
    for page in pages:
        for name in set(named.findall(page.read_text())) - not_metrics:
            assert name in exported, f"{page.name} names {name}, not exported ({sorted(exported)})"
    documented = set(named.findall(metrics.__doc__ or ""))
    for family in families:
        assert family in documented or f"{family}_total" in documented, family


def _serve_metrics_text() -> str:
    """``unifeed serve``'s /metrics as the blocked audience sees it (every family), with a
    history sink present (its families appear only then)."""
    import types

    from unifeed.core.access import BLOCKED
    from unifeed.serve._app import Service, Settings, metrics_text

    service = Service(Settings(input="-"), source_factory=None, history=None)
    service.history = types.SimpleNamespace(up=True, written=0, backlog=0, dropped=0)  # type: ignore[assignment]
    return metrics_text(service, BLOCKED).decode()


def _fetch(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as reply:
        return str(reply.read().decode())
