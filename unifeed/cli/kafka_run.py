"""``unifeed combine`` and ``unifeed mappings`` against Kafka: their arguments become
`RuntimeOptions`, the run is `unifeed.runtime`'s, and what it reports is written here
(the progress line and the closing summary, as records of the ``unifeed.status`` and
``unifeed.summary`` loggers: text or JSON as ``--log-format`` says). Imported only when
a command names a ``kafka:`` target, so that file runs never load the Kafka client."""

from __future__ import annotations

import argparse
import logging
import time
from typing import Any

from unifeed.cli.checkpoint import client_properties
from unifeed.core.errors import ConfigError
from unifeed.core.records import CONTROLSTREAM, MAPPINGSTREAM, SURFACESTREAM
from unifeed.core.units import parse_time_ms
from unifeed.kafka.clients import (
    parse_selection,
    parse_target,
    resolve_bootstrap,
)
from unifeed.runtime import CombineRun, MappingsRun, MergeRun, RuntimeOptions
from unifeed.runtime.options import START_EARLIEST, START_LATEST, Start
from unifeed.runtime.supervisor import signals_stop

__all__ = ["combine_command", "mappings_command", "merge_command", "runtime_options"]

#: Progress lines and summaries: text as they always read, or JSON records (unifeed.cli.logs).
_status_log = logging.getLogger("unifeed.status")
_summary_log = logging.getLogger("unifeed.summary")


def runtime_options(args: argparse.Namespace) -> RuntimeOptions:
    """The `RuntimeOptions` of a ``combine`` or ``mappings`` command line, checked."""
    extra: dict[str, Any] = dict(client_properties(args))
    start: Start = (
        args.start
        if args.start in (START_EARLIEST, START_LATEST)
        else parse_time_ms(args.start, "--start")  # checked now: a typo is a usage error
    )
    defaults = RuntimeOptions(bootstrap="")
    broker_timeout_s = _seconds(args, "broker_timeout", defaults.broker_timeout_s)
    return RuntimeOptions(
        bootstrap=resolve_bootstrap(args.bootstrap_servers),
        instance=args.instance,
        checkpoint_topic=args.checkpoint_topic,
        start=start,
        stop_at=None if args.stop_at is None else parse_time_ms(args.stop_at, "--stop-at"),
        exit_at_end=args.exit_at_end,
        delivery=args.delivery,
        realtime_threshold_ms=getattr(args, "realtime_threshold", defaults.realtime_threshold_ms),
        strict_order=getattr(args, "strict_order", False),
        lookback_ms=args.lookback,
        commit_interval_ms=args.commit_interval,
        catchup_commit_interval_ms=args.catchup_commit_interval,
        dead_letter=args.dead_letter,
        max_dead_letters=getattr(args, "max_dead_letters", None),
        kafka_extra=extra,
        status_interval_s=args.status_interval / 1000 if not args.quiet else 0.0,
        metrics_port=args.metrics_port,
        metrics_host=args.metrics_host,
        end_of_log_grace_s=_seconds(args, "end_of_log_grace", defaults.end_of_log_grace_s),
        broker_timeout_s=broker_timeout_s,
        connect_timeout_s=broker_timeout_s,  # the start-up wait honours --broker-timeout
        wait_for_topics=getattr(args, "wait_for_topics", False),
        allow_nonempty_output=getattr(args, "allow_nonempty_output", False),
        accept_partition_change=getattr(args, "accept_partition_change", False),
    )


def _seconds(args: argparse.Namespace, name: str, default_s: float) -> float:
    """A duration option (milliseconds) in seconds; ``default_s`` where the command has none."""
    ms = getattr(args, name, None)
    return default_s if ms is None else float(ms) / 1000


def combine_command(args: argparse.Namespace) -> int:
    options = runtime_options(args)
    if args.reorder:
        raise ConfigError("--reorder is available for file inputs only")
    run = CombineRun(
        options,
        control=parse_selection(args.control),
        surface=parse_selection(args.surface),
        output=parse_target(args.output),
        mapping=parse_target(args.mapping) if args.mapping else None,
    )
    with signals_stop(run):
        run.start()
        status = StatusLine(run, options.status_interval_s)
        return run.run(status.maybe_print if status.interval > 0 else None)


def merge_command(
    args: argparse.Namespace, inputs: list[tuple[str, str]], live_required: list[str] | None
) -> int:
    """``unifeed merge`` over Kafka inputs (`MergeRun`); ``inputs`` are ``(NAME, SOURCE)``
    in tie-break order."""
    options = runtime_options(args)
    run = MergeRun(
        options,
        {name: parse_selection(source) for name, source in inputs},
        parse_target(args.output),
        live_required,
    )
    with signals_stop(run):
        run.start()
        status = StatusLine(run, options.status_interval_s)
        return run.run(status.maybe_print if status.interval > 0 else None)


def mappings_command(args: argparse.Namespace) -> int:
    options = runtime_options(args)
    run = MappingsRun(
        options, control=parse_selection(args.control), output=parse_target(args.output)
    )
    with signals_stop(run):
        run.start()
        code = run.run()
    if not args.quiet:
        s = run.stats()
        dead = run.state.counters.get("dead_letters", 0)
        _summary_log.info(
            "unifeed mappings [%s]: %d links, %d unlinks, %d keepalives, %d dead letters",
            options.instance, s.links, s.unlinks, s.keepalives, dead,
            extra={"fields": {"command": "mappings", "links": s.links, "unlinks": s.unlinks,
                              "keepalives": s.keepalives, "dead": dead}},
        )  # fmt: skip
    return code


class StatusLine:
    """The progress line (``unifeed.status``): rate, mode, per-feed lag, queue depths."""

    def __init__(self, run: CombineRun | MergeRun, interval_s: float) -> None:
        self.run = run
        self.interval = interval_s
        self.started = time.monotonic()
        self.last = self.started
        self.last_out = 0

    def maybe_print(self, final: bool = False) -> None:
        if self.interval <= 0:
            return
        now = time.monotonic()
        if not final and now - self.last < self.interval:
            return
        st = self.run.state
        out = st.counters.get("out", 0)
        rate = (out - self.last_out) / max(now - self.last, 1e-9)
        if final:
            rate = out / max(now - self.started, 1e-9)
        wall = self.run.options.clock()
        lags = " ".join(f"{f}-lag={_fmt_lag(wall - p)}" for f, p in sorted(st.lag_pitr.items()))
        if isinstance(self.run, CombineRun):
            depths = (
                f"queues writer={self.run.writer_inbox.depth(CONTROLSTREAM)}/"
                f"{self.run.writer_inbox.depth(SURFACESTREAM)} "
                f"annotator={self.run.annot_inbox.depth(MAPPINGSTREAM)}/"
                f"{self.run.annot_inbox.depth(SURFACESTREAM)}"
            )
        else:
            depths = "queues " + " ".join(f"{k}={v}" for k, v in self.run.depths().items())
        fields = {
            "command": self.run.command,
            "mode": "done" if final else st.mode,
            "out": out,
            "rate": round(rate, 1),
            "lag_seconds": {f: (wall - p) / 1000 for f, p in sorted(st.lag_pitr.items())},
            "late": st.counters.get("late", 0),
            "dead": st.counters.get("dead_letters", 0),
            "commits": st.counters.get("commits", 0),
        }
        # One record on "unifeed.status": a line of text, or JSON with these fields.
        _status_log.info(
            "unifeed %s [%s] %s: out=%d rate=%s/s %s %s late=%d dead=%d commits=%d",
            self.run.command, self.run.options.instance, fields["mode"], out, f"{rate:,.0f}", lags, depths,
            fields["late"], fields["dead"], fields["commits"],
            extra={"fields": fields, "final": final},
        )  # fmt: skip
        self.last = now
        self.last_out = out


def _fmt_lag(ms: int) -> str:
    """A lag for the status line, in the unit a person reads it in.

    >>> [_fmt_lag(ms) for ms in (-200, 1_500, 600_000, 36_000_000, 96_062_400_000)]
    ['-0.2s', '1.5s', '10.0m', '10.0h', '1111.8d']
    """
    s = ms / 1000
    if abs(s) < 120:
        return f"{s:.1f}s"
    if abs(s) < 7200:
        return f"{s / 60:.1f}m"
    if abs(s) < 172_800:
        return f"{s / 3600:.1f}h"
    return f"{s / 86_400:.1f}d"


