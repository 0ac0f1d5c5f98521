"""``unifeed serve``: the command line of the serve package.

Registering the subcommand imports nothing of the server stack; the handler imports
Starlette, uvicorn, redis and psycopg when it runs, and says how to install them
(``pip install 'unifeed[serve]'``) when they are missing.
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
import sys
import uuid
from pathlib import Path
from typing import Any

from unifeed.core.errors import ConfigError, UnifeedError

log = logging.getLogger("unifeed.serve")


def _duration(text: str) -> int:
    from unifeed.cli.pipeline import duration_arg

    return duration_arg(text)


def default_state_dir() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "unifeed" / "serve"


def register(subparsers: Any) -> None:
    """Add ``unifeed serve``."""
    from unifeed.cli.checkpoint import add_kafka_options

    p = subparsers.add_parser(
        "serve",
        help="serve the unified feed as live state, history and a WebSocket API",
        description=(
            "Fold the unified feed into the latest state per aircraft (by feed time: an "
            "aircraft is current until --stale of feed time passes without news), keep "
            "every position as history, and answer HTTP and WebSocket clients, each seeing "
            "only what its audience may see. Binds 127.0.0.1 unless told otherwise."
        ),
    )
    p.add_argument("--input", required=True, metavar="X",
                   help="unified feed: a JSON-lines file, - for stdin, or kafka:TOPIC[:PARTITIONS] "
                        "(partition 0 by default; several as 0,1,2)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8080, help="port (default 8080; 0 picks a free one)")
    p.add_argument("--tokens", metavar="FILE",
                   help="lines 'TOKEN AUDIENCE' (public, restricted or blocked); without it "
                        "every client is public")
    p.add_argument("--redis", metavar="URL",
                   help="share live state through Redis (redis://HOST:PORT/DB) between replicas")
    p.add_argument("--history", default="sqlite", metavar="URL",
                   help="where positions are kept: sqlite (default, in --state-dir), "
                        "sqlite:///PATH, postgresql://..., or none")
    p.add_argument("--window", type=_duration, default=_duration("10m"), metavar="DURATION",
                   help="Kafka: rebuild state from this much feed time before the end (default 10m)")
    p.add_argument("--stale", type=_duration, default=_duration("2m"), metavar="DURATION",
                   help="an aircraft without news for this much feed time leaves the map (default 2m)")
    p.add_argument("--push-interval", type=_duration, default=_duration("1s"), metavar="DURATION",
                   help="WebSocket updates at most this often (default 1s)")
    p.add_argument("--lookback", type=_duration, default=_duration("6h"), metavar="DURATION",
                   help="Kafka: read flight data (flightplans, access) this much further back "
                        "than --window (default 6h)")
    p.add_argument("--state-dir", metavar="DIR",
                   help="where the default SQLite history lives (default $XDG_STATE_HOME/unifeed/serve)")
    p.add_argument("--cors-origin", metavar="ORIGINS",
                   help="allow browser requests from these origins (comma-separated, e.g. "
                        "https://map.example.org); no CORS unless given")
    p.add_argument("--client-queue", type=int, default=32, metavar="N",
                   help="frames queued per WebSocket client before it is dropped as too slow (default 32)")
    p.add_argument("--tiles", metavar="URL",
                   help="base map of the page at /: a MapLibre style URL (http or https, e.g. "
                        "https://tiles.example.org/style.json); without it the page draws its "
                        "bundled land, coastlines and airports and needs no internet")
    add_kafka_options(p)
    p.set_defaults(handler=run)


def tiles_url(text: str | None) -> str | None:
    """``--tiles``: an absolute http(s) URL with a host, or a `ConfigError` saying why not."""
    if text is None:
        return None
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(text)
        parts.port  # noqa: B018 (a bad port raises here)
    except ValueError as exc:
        raise ConfigError(f"--tiles {text!r}: not a URL ({exc})") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(
            f"--tiles {text!r}: expected an http:// or https:// URL of a MapLibre style"
        )
    if any(c.isspace() or ord(c) < 32 for c in text):
        raise ConfigError(f"--tiles {text!r}: a URL holds no spaces or control characters")
    return text


def settings_from(args: argparse.Namespace) -> Any:
    from unifeed.serve._app import Settings, read_tokens

    if args.stale <= 0 or args.window < 0 or args.push_interval <= 0:
        raise ConfigError("--stale and --push-interval must be > 0 and --window >= 0")
    if args.client_queue < 1:
        raise ConfigError("--client-queue must be >= 1")
    if not 0 <= args.port <= 65535:
        raise ConfigError(f"--port must be within 0..65535, got {args.port}")
    return Settings(
        input=args.input,
        host=args.host,
        port=args.port,
        tokens=read_tokens(Path(args.tokens)) if args.tokens else {},
        redis_url=args.redis,
        history_url=args.history,
        window_ms=args.window,
        stale_ms=args.stale,
        push_interval_s=args.push_interval / 1000.0,
        lookback_ms=args.lookback,
        state_dir=Path(args.state_dir) if args.state_dir else default_state_dir(),
        cors_origins=[o.strip() for o in (args.cors_origin or "").split(",") if o.strip()],
        client_queue=args.client_queue,
        replica=uuid.uuid4().hex[:12],
        tiles_url=tiles_url(args.tiles),
    )


def make_service(settings: Any, args: argparse.Namespace | None = None) -> Any:
    """The `Service` for ``settings``: its history store, source and shared state."""
    from unifeed.serve._app import Service
    from unifeed.serve._history import open_store
    from unifeed.serve._source import KafkaSource, LineSource, Source

    store = open_store(settings.history_url, settings.state_dir)
    text = settings.input
    if text.startswith("kafka:"):
        from unifeed.serve._source import parse_partitions

        parse_partitions(text)  # a bad target is a usage error now, not in a thread later
        if args is not None:
            from unifeed.cli.checkpoint import kafka_settings

            settings.bootstrap, settings.kafka_extra = kafka_settings(args)
        if settings.bootstrap is None:
            raise ConfigError("--input kafka:... needs --bootstrap-servers")

        def kafka_source(service: Any) -> Source:
            sink = service.history
            return KafkaSource(
                text,
                settings.bootstrap,
                settings.kafka_extra,
                window_ms=settings.window_ms,
                lookback_ms=settings.lookback_ms,
                history_positions=lambda: dict(sink.positions) if sink is not None else {},
            )

        factory = kafka_source
    else:
        LineSource(text)  # checks the file exists

        def line_source(service: Any) -> Source:
            return LineSource(text)

        factory = line_source
    shared = None
    if settings.redis_url:
        from unifeed.serve._shared import SharedState, check_reachable

        check_reachable(settings.redis_url)
        shared = SharedState(settings.redis_url, text, settings.replica, settings.stale_ms)
    return Service(settings, source_factory=factory, history=store, shared=shared)


def run(args: argparse.Namespace) -> int:
    try:
        import uvicorn

        from unifeed.serve._app import build_app
    except ModuleNotFoundError as exc:
        raise ConfigError(
            f"unifeed serve needs {exc.name}: pip install 'unifeed[serve]'"
        ) from None
    settings = settings_from(args)
    service = make_service(settings, args)
    app = build_app(service)
    listener = _bind(settings.host, settings.port)
    host, port = listener.getsockname()[:2]
    print(f"unifeed serve: http://{host}:{port}/ (input {settings.input})", file=sys.stderr, flush=True)
    config = uvicorn.Config(
        app,
        access_log=False,  # it would print ?token=... query strings
        log_config=None,
        ws_max_size=65_536,
        lifespan="on",
        timeout_graceful_shutdown=5,
    )
    server = _server_class(uvicorn)(config)
    server.service = service
    server.run(sockets=[listener])
    if service.failure is not None:
        failure = service.failure
        if isinstance(failure, UnifeedError):
            raise failure
        raise UnifeedError(f"stopped: {failure}")
    return 0


def _server_class(uvicorn: Any) -> Any:
    import asyncio
    import contextlib
    import signal
    import threading
    from collections.abc import Iterator

    class Server(uvicorn.Server):  # type: ignore[misc]
        """uvicorn's server that also stops when the input fails, and treats SIGTERM and
        SIGINT as a normal stop (exit 0) instead of dying of the signal afterwards."""

        service: Any = None

        async def startup(self, sockets: Any = None) -> None:
            await super().startup(sockets=sockets)
            self._watch = asyncio.create_task(self._stop_on_failure())

        async def _stop_on_failure(self) -> None:
            await self.service.stopped.wait()
            self.should_exit = True

        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            if threading.current_thread() is not threading.main_thread():
                yield
                return
            handled = (signal.SIGINT, signal.SIGTERM)
            original = {sig: signal.signal(sig, self.handle_exit) for sig in handled}
            try:
                yield
            finally:
                for sig, handler in original.items():
                    signal.signal(sig, handler)

    return Server


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    listener = socket.socket(family, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listener.bind((host, port))
    except OSError as exc:
        listener.close()
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    listener.listen(1024)
    listener.set_inheritable(True)
    return listener
