"""The ASGI application of ``unifeed serve`` (Starlette; uvicorn runs it).

`Service` owns the live state and the background work: applying source batches (on the
event loop, so state needs no lock), history, the shared Redis state, and the push cycle
that sends every WebSocket client the changes inside its viewport. `build_app` makes the
Starlette application from a `Settings`; tests call it with their own settings.

Access: every request has an audience (`Service.audience_of`): no token is ``public``, a
known token gives its audience, an unknown one is 401. Tokens are compared as SHA-256
digests with `hmac.compare_digest` against every known token (no early exit) and are
never logged (uvicorn's access log, which prints query strings, is off).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import msgspec
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import BaseRoute, Mount, Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from unifeed.core.access import BLOCKED, PUBLIC, audience_rank
from unifeed.core.combine import DEFAULT_REALTIME_THRESHOLD_MS
from unifeed.core.errors import ConfigError, UnifeedError
from unifeed.core.geo import Bbox
from unifeed.core.records import ACCESS_LEVELS

from ._history import HistorySink, HistoryStore, playback_lines
from ._source import Batch, Source
from ._state import Aircraft, Changes, Fold, Table, Viewport, aircraft_json, valid_bbox

log = logging.getLogger("unifeed.serve")

STATIC_DIR: Final = Path(__file__).parent / "static"
#: Largest WebSocket message a client may send.
MAX_WS_MESSAGE: Final = 4096
#: Viewport changes a client may send: a burst of this many, refilled at this rate per
#: second (each one costs a snapshot).
WS_MESSAGE_BURST: Final = 20
WS_MESSAGES_PER_S: Final = 10.0
#: Longest playback range per request, and longest track range.
MAX_PLAYBACK_MS: Final = 3_600_000
MAX_TRACK_MS: Final = 7 * 86_400_000
_NOT_FOUND: Final = b'{"detail":"no such aircraft"}'


@dataclass
class Settings:
    """Everything ``unifeed serve`` is told, typed."""

    input: str
    host: str = "127.0.0.1"
    port: int = 8080
    tokens: dict[bytes, int] = field(default_factory=dict)  # SHA-256 of token -> rank
    redis_url: str | None = None
    history_url: str = "sqlite"
    window_ms: int = 600_000
    stale_ms: int = 120_000
    push_interval_s: float = 1.0
    lookback_ms: int = 6 * 3_600_000
    state_dir: Path = Path(".")
    cors_origins: list[str] = field(default_factory=list)
    client_queue: int = 32
    bootstrap: str | None = None
    kafka_extra: dict[str, str] = field(default_factory=dict)
    replica: str = ""
    #: A MapLibre style URL for the page's base map (``--tiles``); None: the bundled one.
    tiles_url: str | None = None


def read_tokens(path: Path) -> dict[bytes, int]:
    """``TOKEN AUDIENCE`` lines (``#`` comments, blank lines skipped) into digest -> rank.

    Errors name the file and line, never the token.
    """
    tokens: dict[bytes, int] = {}
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"--tokens {path}: cannot read ({exc.strerror})") from None
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split()
        if len(parts) != 2:
            raise ConfigError(f"--tokens {path}:{number}: expected 'TOKEN AUDIENCE'")
        try:
            rank = audience_rank(parts[1])
        except ValueError as exc:
            raise ConfigError(f"--tokens {path}:{number}: {exc}") from None
        tokens[_digest(parts[0])] = rank
    return tokens


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).digest()


class Unauthorized(Exception):
    """An unknown token."""


class BadRequest(Exception):
    """A parameter out of range; the message says which and why."""


class Client:
    """One WebSocket client: its audience, its viewport and its bounded send queue."""

    def __init__(self, socket: WebSocket, audience: int, limit: int) -> None:
        self.socket = socket
        self.audience = audience
        self.viewport: Viewport | None = None
        self.frames: asyncio.Queue[bytes | None] = asyncio.Queue(maxsize=limit)
        self.dropped: str | None = None

    def offer(self, frame: bytes) -> bool:
        """Queue a frame; False when the queue is full (the client is too slow)."""
        try:
            self.frames.put_nowait(frame)
            return True
        except asyncio.QueueFull:
            return False


class Metrics:
    def __init__(self) -> None:
        self.records = 0
        self.bad_records = 0
        self.frames = 0
        self.bytes_sent = 0
        self.dropped_slow = 0
        self.closed_bad_message = 0
        self.unauthorized = 0
        self.cycles = 0
        self.cycle_cpu_s = 0.0
        self.last_cycle_cpu_s = 0.0


class Service:
    """Live state and the background work around it; one per application."""

    def __init__(
        self,
        settings: Settings,
        *,
        source_factory: Callable[[Service], Source] | None,
        history: HistoryStore | None,
        shared: Any = None,
    ) -> None:
        self.settings = settings
        self.table = Table(settings.stale_ms)
        self.fold = Fold(self.table)
        self.ready = False
        self.metrics = Metrics()
        self.clients: set[Client] = set()
        self.source_factory = source_factory
        self.source: Source | None = None
        # A replica that only follows Redis never starts its sink.
        self.history = HistorySink(history) if history is not None else None
        self.history_store = history
        self.shared = shared
        self._tasks: list[asyncio.Task[None]] = []
        self.failure: BaseException | None = None
        self.stopped = asyncio.Event()

    # --- access --------------------------------------------------------------

    def audience_of(self, token: str | None) -> int:
        """The caller's audience rank; `Unauthorized` for a token nobody was given."""
        if token is None or token == "":
            return PUBLIC
        digest = _digest(token)
        found: int | None = None
        for known, rank in self.settings.tokens.items():
            if hmac.compare_digest(known, digest):
                found = rank
        if found is None:
            self.metrics.unauthorized += 1
            raise Unauthorized
        return found

    def mode(self) -> str:
        """``live`` while feed time is within the combiner's default real-time threshold
        of the wall clock, else ``catchup``."""
        lag = time.time() * 1000 - self.table.pitr
        return "live" if lag <= DEFAULT_REALTIME_THRESHOLD_MS else "catchup"

    # --- lifecycle -----------------------------------------------------------

    async def start(self) -> None:
        if self.shared is not None:
            await self.shared.start(self)
        elif self.source_factory is not None:
            await self.start_source()
        self._tasks.append(asyncio.create_task(self._push_loop(), name="push"))

    async def start_source(self) -> None:
        """Start history and the input reader (in the replica that consumes the input)."""
        assert self.source_factory is not None
        self.source = self.source_factory(self)
        if self.history is not None:
            await asyncio.to_thread(self.history.start)
        self.source.start()
        self._tasks.append(asyncio.create_task(self._feed_loop(), name="feed"))

    async def stop(self) -> None:
        for client in list(self.clients):
            with contextlib.suppress(asyncio.QueueFull):
                client.frames.put_nowait(None)
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self.source is not None:
            await asyncio.to_thread(self.source.stop)
        if self.shared is not None:
            await self.shared.stop()
        if self.history is not None and self.source is not None:
            await asyncio.to_thread(self.history.stop)

    async def _feed_loop(self) -> None:
        source = self.source
        assert source is not None
        while True:
            item = await asyncio.to_thread(_take, source)
            if item is None:
                continue
            if isinstance(item, BaseException):
                self.failure = item
                log.error("reading %s failed: %s", source.describe, item)
                self.stopped.set()
                return
            try:
                self.apply(item)
            except Exception as exc:  # a failure here must stop serve, not freeze its state
                self._fail(f"applying a batch of {source.describe}", exc)
                return

    def apply(self, batch: Batch) -> Changes:
        """Fold one source batch; history and shared state get their part afterwards."""
        changes = self.fold.apply(batch.lines)
        self.metrics.records += len(batch.lines)
        self.metrics.bad_records += changes.bad
        if self.history is not None and changes.positions:
            # Positions and states pair up in feed order: a record yields at most one state.
            self.history.offer(_pair(self.source, batch, changes))
        if batch.rebuilt and not self.ready:
            self.ready = True
            log.info("state rebuilt: %d aircraft at feed time %d", len(self.table), self.table.pitr)
        if self.shared is not None:
            self.shared.publish(changes, self.table.pitr, self.ready)
        return changes

    async def _push_loop(self) -> None:
        interval = self.settings.push_interval_s
        while True:
            started = time.monotonic()
            try:
                self.push_cycle()
            except Exception as exc:  # a failure here must stop serve, not its updates
                self._fail("the push cycle", exc)
                return
            await asyncio.sleep(max(0.0, interval - (time.monotonic() - started)))

    def _fail(self, what: str, exc: Exception) -> None:
        log.error("%s failed: %s: %s", what, type(exc).__name__, exc)
        log.debug("where %s failed", what, exc_info=exc)
        self.failure = exc
        self.stopped.set()

    def push_cycle(self) -> None:
        """Expire what went stale by feed time, then send every viewport its update."""
        cpu = time.process_time()
        expired = self.fold.expire() if self.shared is None or self.shared.leader else None
        if expired and self.shared is not None:
            self.shared.publish(expired, self.table.pitr, self.ready)
        table = self.table
        mode = self.mode()
        for client in list(self.clients):
            viewport = client.viewport
            if viewport is None or client.dropped:
                continue
            frame = viewport.update(table, mode)
            if frame is not None and not client.offer(frame):
                self.drop(client, "client too slow: its send queue is full")
        spent = time.process_time() - cpu
        self.metrics.cycles += 1
        self.metrics.cycle_cpu_s += spent
        self.metrics.last_cycle_cpu_s = spent

    def drop(self, client: Client, reason: str) -> None:
        """Stop serving a client that does not keep up; its queued frames go, nothing more
        is queued for it, and the sender closes it with ``reason`` once it can."""
        client.dropped = reason
        self.clients.discard(client)
        self.metrics.dropped_slow += 1
        while not client.frames.empty():
            client.frames.get_nowait()
        client.frames.put_nowait(None)

    # --- shared-state followers ------------------------------------------------

    def apply_shared(self, upserts: list[Aircraft], removed: list[str], pitr: int, ready: bool) -> None:
        """Changes announced by the replica that consumes the input."""
        table = self.table
        for aircraft in upserts:
            old = table.get(aircraft.id)
            if old is None or old.pitr <= aircraft.pitr:
                table.put(aircraft)
        for key in removed:
            table.drop(key)
        if pitr > table.pitr:
            table.pitr = pitr
        if ready:
            self.ready = True


def _take(source: Source) -> Batch | BaseException | None:
    import queue

    try:
        return source.batches.get(timeout=0.5)
    except queue.Empty:
        return None


def _pair(source: Source | None, batch: Batch, changes: Changes) -> list[tuple[str, int, Aircraft]]:
    """(source, input position, state) of every position state of a batch."""
    positions = batch.positions
    sources = batch.sources
    name = source.describe if source is not None else ""
    return [
        (sources[index] if sources is not None else name, positions[index], aircraft)
        for index, aircraft in zip(changes.position_index, changes.positions, strict=True)
    ]


# --- request parsing --------------------------------------------------------


def parse_bbox(text: str | None) -> Bbox | None:
    if text is None:
        return None
    parts = text.split(",")
    if len(parts) != 4:
        raise BadRequest("bbox must be W,S,E,N (four numbers in degrees)")
    try:
        west, south, east, north = (float(p) for p in parts)
    except ValueError:
        raise BadRequest("bbox must be W,S,E,N (four numbers in degrees)") from None
    box = (west, south, east, north)
    reason = valid_bbox(box)
    if reason is not None:
        raise BadRequest(reason)
    return box


def parse_range(request: Request, default_end: int, longest_ms: int) -> tuple[int, int]:
    from unifeed.core.units import parse_time_ms

    params = request.query_params
    try:
        end = parse_time_ms(params["to"], "to") if "to" in params else default_end
        start = parse_time_ms(params["from"], "from") if "from" in params else end - longest_ms
    except UnifeedError as exc:
        raise BadRequest(str(exc)) from None
    if start >= end:
        raise BadRequest(f"from must be before to, got from={start} to={end}")
    if end - start > longest_ms:
        raise BadRequest(
            f"the range from..to may span at most {longest_ms // 60_000} minutes, got "
            f"{(end - start) / 60_000:g}"
        )
    return start, end


def _token_from_header(headers: Any) -> str | None:
    value = headers.get("authorization")
    if value is None:
        return None
    scheme, _, token = value.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return "\x00malformed"  # never a known token: 401
    return str(token.strip())


def _error(status: int, detail: str) -> Response:
    return JSONResponse({"detail": detail}, status_code=status)


# --- the application ------------------------------------------------------------


def build_app(service: Service) -> Starlette:
    settings = service.settings

    def audience(request: Request) -> int:
        return service.audience_of(_token_from_header(request.headers))

    def guarded(handler: Callable[[Request, int], Any]) -> Callable[[Request], Any]:
        async def endpoint(request: Request) -> Response:
            try:
                rank = audience(request)
                result: Response = await handler(request, rank)
                return result
            except Unauthorized:
                return _error(401, "unknown token")
            except BadRequest as exc:
                return _error(400, str(exc))

        return endpoint

    async def aircraft_list(request: Request, rank: int) -> Response:
        bbox = parse_bbox(request.query_params.get("bbox"))
        table = service.table
        found = table.query(bbox, rank)
        body = b'{"pitr":%d,"mode":"%s","aircraft":%s}' % (
            table.pitr,
            service.mode().encode(),
            aircraft_json(table, found),
        )
        return Response(body, media_type="application/json")

    async def aircraft_one(request: Request, rank: int) -> Response:
        found = service.table.lookup(request.path_params["key"], rank)
        if found is None:
            return Response(_NOT_FOUND, status_code=404, media_type="application/json")
        return Response(service.table.encoded(found), media_type="application/json")

    async def track(request: Request, rank: int) -> Response:
        key = request.path_params["key"]
        start, end = parse_range(request, service.table.pitr + 1, MAX_TRACK_MS)
        store = service.history_store
        rows: list[bytes] = []
        if store is not None:
            try:
                rows = await asyncio.to_thread(store.track, key, start, end, rank)
            except Exception as exc:
                log.warning("track from history failed: %s", exc)
                return _error(503, "history is unavailable")
        if not rows and service.table.lookup(key, rank) is None:
            # Unknown, hidden, or nothing visible in the range: one answer for all three.
            return Response(_NOT_FOUND, status_code=404, media_type="application/json")
        body = b'{"id":%s,"positions":[%s]}' % (msgspec.json.encode(key), b",".join(rows))
        return Response(body, media_type="application/json")

    async def playback(request: Request, rank: int) -> Response:
        start, end = parse_range(request, service.table.pitr + 1, MAX_PLAYBACK_MS)
        bbox = parse_bbox(request.query_params.get("bbox"))
        store = service.history_store
        if store is None:
            return _error(503, "history is off (--history none): no playback")

        async def lines() -> AsyncIterator[bytes]:
            queue: asyncio.Queue[bytes | None] = asyncio.Queue(maxsize=8)
            loop = asyncio.get_running_loop()

            def produce() -> None:
                chunk: list[bytes] = []
                try:
                    for state in playback_lines(store, start, end, rank, bbox):
                        chunk.append(state)
                        if len(chunk) >= 1000:
                            asyncio.run_coroutine_threadsafe(
                                queue.put(b"\n".join(chunk) + b"\n"), loop
                            ).result(60)
                            chunk = []
                    if chunk:
                        asyncio.run_coroutine_threadsafe(
                            queue.put(b"\n".join(chunk) + b"\n"), loop
                        ).result(60)
                finally:
                    asyncio.run_coroutine_threadsafe(queue.put(None), loop).result(60)

            worker = asyncio.create_task(asyncio.to_thread(produce))
            try:
                while True:
                    part = await queue.get()
                    if part is None:
                        break
                    yield part
            finally:
                await worker

        return StreamingResponse(lines(), media_type="application/x-ndjson")

    async def healthz(request: Request) -> Response:
        body = {"ready": service.ready, "pitr": service.table.pitr, "mode": service.mode()}
        return JSONResponse(body, status_code=200 if service.ready else 503)

    async def metrics(request: Request, rank: int) -> Response:
        return Response(metrics_text(service, rank), media_type="text/plain; version=0.0.4")

    async def websocket(socket: WebSocket) -> None:
        await serve_socket(service, socket)

    config_body = msgspec.json.encode({"style": settings.tiles_url})

    async def page_config(request: Request) -> Response:
        # The page's base map: the --tiles style, or null for the bundled layers. Answered
        # here rather than by the static config.json, and never cached, so a restart with
        # another --tiles takes effect on the next page load.
        return Response(config_body, media_type="application/json", headers={"Cache-Control": "no-store"})

    routes: list[BaseRoute] = [
        Route("/api/aircraft", guarded(aircraft_list)),
        Route("/api/aircraft/{key:path}/track", guarded(track)),
        Route("/api/aircraft/{key:path}", guarded(aircraft_one)),
        Route("/api/playback", guarded(playback)),
        Route("/healthz", healthz),
        Route("/metrics", guarded(metrics)),
        WebSocketRoute("/ws", websocket),
        # Before the static mount, which holds a config.json for a page served without it.
        Route("/config.json", page_config),
    ]
    if (STATIC_DIR / "index.html").is_file():
        from starlette.staticfiles import StaticFiles

        routes.append(Mount("/", app=StaticFiles(directory=STATIC_DIR, html=True), name="static"))
    middleware: list[Middleware] = []
    if settings.cors_origins:
        from starlette.middleware.cors import CORSMiddleware

        middleware.append(
            Middleware(
                CORSMiddleware,
                allow_origins=settings.cors_origins,
                allow_methods=["GET"],
                allow_headers=["Authorization"],
            )
        )

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await service.start()
        try:
            yield
        finally:
            await service.stop()

    return Starlette(routes=routes, middleware=middleware, lifespan=lifespan)


async def serve_socket(service: Service, socket: WebSocket) -> None:
    token = socket.query_params.get("token") or _token_from_header(socket.headers)
    try:
        rank = service.audience_of(token)
    except Unauthorized:
        try:
            await socket.send_denial_response(_error(401, "unknown token"))
        except RuntimeError:
            await socket.close(code=1008, reason="unknown token")
        return
    await socket.accept()
    client = Client(socket, rank, service.settings.client_queue)
    service.clients.add(client)
    sender = asyncio.create_task(_send_frames(service, client))
    allowance = float(WS_MESSAGE_BURST)
    last = time.monotonic()
    try:
        while client.dropped is None:
            message = await socket.receive()
            if message["type"] == "websocket.disconnect":
                break
            now = time.monotonic()
            allowance = min(float(WS_MESSAGE_BURST), allowance + (now - last) * WS_MESSAGES_PER_S)
            last = now
            if allowance < 1.0:
                await _close(service, client, 1008, "too many messages: at most 10 per second")
                break
            allowance -= 1.0
            data = message.get("text")
            if data is None:
                raw = message.get("bytes") or b""
                size = len(raw)
            else:
                size = len(data.encode("utf-8", "surrogatepass"))
                raw = data.encode("utf-8", "surrogatepass")
            if size > MAX_WS_MESSAGE:
                await _close(service, client, 1009, f"message larger than {MAX_WS_MESSAGE} bytes")
                break
            reason, box = _parse_ws_message(raw)
            if box is None:
                await _close(service, client, 1008, reason)
                break
            if client.dropped is not None:
                break
            client.viewport = Viewport(box, rank)
            if not client.offer(client.viewport.snapshot(service.table, service.mode())):
                service.drop(client, "client too slow: its send queue is full")
    except WebSocketDisconnect:
        pass
    finally:
        service.clients.discard(client)
        if client.dropped is None:
            client.dropped = "closed"
        with contextlib.suppress(asyncio.QueueFull):
            client.frames.put_nowait(None)
        await sender


class _WsMessage(msgspec.Struct, forbid_unknown_fields=True):
    bbox: list[float]


_ws_decoder: Final = msgspec.json.Decoder(_WsMessage)


def _parse_ws_message(raw: bytes) -> tuple[str, Bbox | None]:
    try:
        message = _ws_decoder.decode(raw)
    except msgspec.DecodeError as exc:
        return f'expected {{"bbox":[W,S,E,N]}}: {exc}'[:120], None
    if len(message.bbox) != 4:
        return "bbox must hold four numbers: W,S,E,N", None
    box = (message.bbox[0], message.bbox[1], message.bbox[2], message.bbox[3])
    reason = valid_bbox(box)
    if reason is not None:
        return reason[:120], None
    return "", box


async def _close(service: Service, client: Client, code: int, reason: str) -> None:
    service.metrics.closed_bad_message += 1
    client.dropped = reason
    with contextlib.suppress(Exception):
        await client.socket.close(code=code, reason=reason)


async def _send_frames(service: Service, client: Client) -> None:
    socket = client.socket
    try:
        while True:
            frame = await client.frames.get()
            if frame is None:
                break
            await socket.send_text(frame.decode())
            service.metrics.frames += 1
            service.metrics.bytes_sent += len(frame)
    except Exception:
        client.dropped = client.dropped or "send failed"
    if client.dropped and client.dropped.startswith("client too slow"):
        with contextlib.suppress(Exception):
            await socket.close(code=1013, reason=client.dropped)


def metrics_text(service: Service, rank: int) -> bytes:
    """Prometheus text. Feed-wide counts (records read, history rows) could tell a caller
    how much restricted traffic there is, so they are shown to the ``blocked`` audience
    only; the aircraft gauge counts what the caller may see."""
    m = service.metrics
    lines = [
        "# TYPE unifeed_serve_ready gauge",
        f"unifeed_serve_ready {int(service.ready)}",
        "# TYPE unifeed_serve_feed_pitr_ms gauge",
        f"unifeed_serve_feed_pitr_ms {service.table.pitr}",
        "# TYPE unifeed_serve_aircraft gauge",
        f'unifeed_serve_aircraft{{audience="{ACCESS_LEVELS[rank]}"}} {len(service.table.query(None, rank))}',
        "# TYPE unifeed_serve_ws_clients gauge",
        f"unifeed_serve_ws_clients {len(service.clients)}",
        "# TYPE unifeed_serve_ws_frames_total counter",
        f"unifeed_serve_ws_frames_total {m.frames}",
        "# TYPE unifeed_serve_ws_bytes_total counter",
        f"unifeed_serve_ws_bytes_total {m.bytes_sent}",
        "# TYPE unifeed_serve_ws_dropped_total counter",
        f'unifeed_serve_ws_dropped_total{{reason="slow"}} {m.dropped_slow}',
        f'unifeed_serve_ws_dropped_total{{reason="bad_message"}} {m.closed_bad_message}',
        "# TYPE unifeed_serve_unauthorized_total counter",
        f"unifeed_serve_unauthorized_total {m.unauthorized}",
        "# TYPE unifeed_serve_push_cycle_cpu_seconds gauge",
        f"unifeed_serve_push_cycle_cpu_seconds {m.last_cycle_cpu_s:.6f}",
    ]
    if rank >= BLOCKED:
        history = service.history
        lines += [
            "# TYPE unifeed_serve_records_total counter",
            f"unifeed_serve_records_total {m.records}",
            "# TYPE unifeed_serve_bad_records_total counter",
            f"unifeed_serve_bad_records_total {m.bad_records}",
        ]
        if history is not None:
            lines += [
                "# TYPE unifeed_serve_history_up gauge",
                f"unifeed_serve_history_up {int(history.up)}",
                "# TYPE unifeed_serve_history_rows_total counter",
                f"unifeed_serve_history_rows_total {history.written}",
                "# TYPE unifeed_serve_history_backlog_rows gauge",
                f"unifeed_serve_history_backlog_rows {history.backlog}",
                "# TYPE unifeed_serve_history_dropped_rows_total counter",
                f"unifeed_serve_history_dropped_rows_total {history.dropped}",
            ]
    return ("\n".join(lines) + "\n").encode()

