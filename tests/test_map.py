"""The live map (unifeed/serve/static) in a real headless Chromium, on a real ``unifeed
serve`` subprocess.

The page is read through its own state (``window.unifeedMap.state()``: drawn aircraft ids,
viewport, selection, follow flag, clock), never through pixels; each test still saves a
screenshot under its pytest temporary directory. Chromium is Debian's (``/usr/bin/chromium``,
WebGL 2 through SwiftShader), driven by Playwright's Python package, which downloads
nothing here. Without Chromium the tests skip, saying why.

``MAP_SCREENSHOT=docs/map.png`` makes `test_clicking_an_aircraft_opens_its_panel`
also write its screenshot there (the one in the README).
"""

from __future__ import annotations

import base64
import contextlib
import http.server
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

os.environ.setdefault("PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD", "1")
sync_api = pytest.importorskip(
    "playwright.sync_api", reason="the browser tests need Playwright: pip install -e '.[test]'"
)

CHROMIUM = shutil.which("chromium") or (
    "/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None
)
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        CHROMIUM is None,
        reason="no Chromium on this machine (Debian: apt-get install chromium; .ci/run does it as root)",
    ),
]

CHROMIUM_ARGS = [
    "--no-sandbox",
    "--use-angle=swiftshader",
    "--enable-unsafe-swiftshader",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
TOKENS = {"pub-token": "public", "res-token": "restricted", "blk-token": "blocked"}
WAIT_MS = 30_000
# The simulated airports are on the US west coast; zoom 5 there shows all of them.
WEST_COAST = "lon=-120&lat=38&zoom=5"


# --- servers -------------------------------------------------------------------------------


def _cli(*args: str, cwd: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "unifeed", *args], cwd=cwd, capture_output=True, timeout=120
    )
    assert done.returncode == 0, done.stderr.decode()


class Serve:
    """``unifeed serve`` as a subprocess; its URL is read from its first stderr line."""

    def __init__(self, args: list[str], workdir: Path) -> None:
        self.log = workdir / "serve.log"
        self._log_file = self.log.open("wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "unifeed", "serve", "--port", "0", *args],
            cwd=workdir,
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
        )
        self.url = self._wait_url()
        self._wait_ready()

    def _wait_url(self) -> str:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            found = re.search(r"unifeed serve: (http://\S+/)", self.log.read_text(errors="replace"))
            if found:
                return found.group(1)
            assert self.process.poll() is None, self.log.read_text()
            time.sleep(0.1)
        raise AssertionError(f"serve printed no URL within 60 s: {self.log.read_text()}")

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(self.url + "healthz", timeout=5).status_code == 200:
                    return
            assert self.process.poll() is None, self.log.read_text()
            time.sleep(0.2)
        raise AssertionError(f"serve not ready within 60 s: {self.log.read_text()}")

    def get(self, path: str, token: str | None = None, **params: Any) -> Any:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        answer = httpx.get(self.url + path, params=params, headers=headers, timeout=30)
        answer.raise_for_status()
        return answer.json()

    def ids(self, bbox: list[float] | None, token: str | None = None) -> list[str]:
        params = {"bbox": ",".join(repr(v) for v in bbox)} if bbox else {}
        return sorted(a["id"] for a in self.get("api/aircraft", token, **params)["aircraft"])

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=15)
        self._log_file.close()


@pytest.fixture(scope="module")
def feed_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Serve]:
    """serve on the unified feed of 3 simulated minutes (the demo's kind of traffic, with
    restricted and blocked flights), history in SQLite, three tokens."""
    work = tmp_path_factory.mktemp("map-feed")
    _cli("simulate", "--out-dir", str(work), "--minutes", "3", "--rate", "20", cwd=work)
    _cli(
        "combine", "--control", "controlstream.jsonl", "--surface", "surfacestream.jsonl",
        "--output", "unified.jsonl", cwd=work,
    )  # fmt: skip
    (work / "tokens").write_text("".join(f"{t} {a}\n" for t, a in TOKENS.items()))
    server = Serve(
        [
            "--input", "unified.jsonl", "--tokens", "tokens", "--state-dir", str(work),
            "--history", f"sqlite:///{work / 'history.db'}", "--push-interval", "250ms",
        ],
        work,
    )  # fmt: skip
    try:
        yield server
    finally:
        server.stop()


# --- the browser ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True
        )
        try:
            yield chromium
        finally:
            chromium.close()


class Page:
    """One browser page on the map, with its console errors collected."""

    def __init__(self, browser: Any, width: int = 1280, height: int = 800) -> None:
        self.context = browser.new_context(viewport={"width": width, "height": height})
        self.page = self.context.new_page()
        self.errors: list[str] = []
        self.closed = False
        # The page works with no internet: every request it or its workers make must go to
        # serve (the page's request event sees the workers' requests too; routing does
        # not); the assertion is in `open_page`.
        self.outside: list[str] = []
        self.requests: list[str] = []
        self.page.on("request", self._note)
        self.page.on(
            "console", lambda m: self.errors.append(m.text) if m.type == "error" else None
        )
        self.page.on("pageerror", lambda e: self.errors.append(f"page error: {e}"))

    def _note(self, request: Any) -> None:
        self.requests.append(request.url)
        if not re.match(r"(https?|wss?)://127\.0\.0\.1[:/]|data:|blob:", request.url):
            self.outside.append(request.url)

    def open(self, url: str) -> dict[str, Any]:
        self.page.goto(url)
        self.page.wait_for_function(
            "() => window.unifeedMap && window.unifeedMap.state().ready", timeout=WAIT_MS
        )
        return self.settled()

    def state(self) -> dict[str, Any]:
        result: dict[str, Any] = self.page.evaluate("() => window.unifeedMap.state()")
        return result

    def settled(self) -> dict[str, Any]:
        """The state once the drawn aircraft answer the viewport last sent."""
        self.page.wait_for_function(
            """() => { const s = window.unifeedMap.state();
                       return s.ws === 'open' && s.viewport !== null &&
                              JSON.stringify(s.viewport) === JSON.stringify(s.drawnViewport); }""",
            timeout=WAIT_MS,
        )
        time.sleep(0.6)  # updates already queued for that viewport arrive
        return self.state()

    def wait(self, expression: str, arg: Any = None) -> None:
        self.page.wait_for_function(expression, arg=arg, timeout=WAIT_MS)

    def drag(self, dx: int, dy: int, x: int = 640, y: int = 420) -> None:
        mouse = self.page.mouse
        mouse.move(x, y)
        mouse.down()
        mouse.move(x + dx / 2, y + dy / 2, steps=8)
        mouse.move(x + dx, y + dy, steps=8)
        mouse.up()

    def isolated_aircraft(self) -> tuple[str, float, float]:
        """An aircraft drawn clear of the others and of the page's panels, and where it is."""
        found = self.page.evaluate(
            """() => {
              const m = window.unifeedMap, s = m.state();
              const at = s.aircraft.map((id) => [id, m.project(id)]);
              const clear = ([id, p]) => p.x > 360 && p.x < 1180 && p.y > 140 && p.y < 640 &&
                at.every(([other, q]) => other === id || Math.hypot(p.x - q.x, p.y - q.y) > 30);
              const pick = at.find(clear);
              return pick ? [pick[0], pick[1].x, pick[1].y] : null;
            }"""
        )
        assert found is not None, "no aircraft drawn clear of the others"
        return found[0], found[1], found[2]

    def share_of_colour(self, rgb: tuple[int, int, int]) -> float:
        """The share of the page's screenshot (what a user sees) in colour ``rgb`` (±3 per
        channel), decoded by the browser itself."""
        png = base64.b64encode(self.page.screenshot()).decode()
        share: float = self.page.evaluate(
            """async ([png, rgb]) => {
              const image = new Image();
              image.src = `data:image/png;base64,${png}`;
              await image.decode();
              const canvas = document.createElement('canvas');
              canvas.width = image.width;
              canvas.height = image.height;
              const g = canvas.getContext('2d');
              g.drawImage(image, 0, 0);
              const px = g.getImageData(0, 0, canvas.width, canvas.height).data;
              let hits = 0;
              for (let i = 0; i < px.length; i += 4) {
                if (Math.abs(px[i] - rgb[0]) <= 3 && Math.abs(px[i + 1] - rgb[1]) <= 3 &&
                    Math.abs(px[i + 2] - rgb[2]) <= 3) hits++;
              }
              return hits / (px.length / 4);
            }""",
            [png, list(rgb)],
        )
        return share

    def close(self, shot: Path) -> None:
        if self.closed:
            return
        self.page.screenshot(path=str(shot))
        self.context.close()
        self.closed = True


@pytest.fixture
def open_page(browser: Any, tmp_path: Path) -> Iterator[Callable[..., Page]]:
    """Pages for one test; each leaves a screenshot in tmp_path and must log no error."""
    pages: list[Page] = []

    def make(width: int = 1280, height: int = 800) -> Page:
        page = Page(browser, width, height)
        pages.append(page)
        return page

    yield make
    for number, page in enumerate(pages):
        shot = tmp_path / f"map-{number}.png"
        page.close(shot)
        assert page.closed
    for page in pages:
        assert page.errors == [], page.errors
        assert page.outside == [], page.outside


# --- tests -------------------------------------------------------------------------------------


def test_page_loads_and_draws_the_api_answer(
    feed_server: Serve, open_page: Callable[..., Page], tmp_path: Path
) -> None:
    page = open_page()
    state = page.open(f"{feed_server.url}?{WEST_COAST}")
    assert state["errors"] == []
    assert state["count"] > 50, state["count"]
    assert state["aircraft"] == feed_server.ids(state["viewport"])
    # The clock shows the feed's time (the simulation's end), not the wall clock, and the
    # server's mode for it: a feed years old is catching up.
    assert state["clock"]["pitr"] == feed_server.get("api/aircraft")["pitr"]
    assert state["clock"]["text"].startswith("2023-11-14 22:")
    assert state["clock"]["badge"] == "catching up"


def test_page_without_a_view_opens_on_the_traffic(
    feed_server: Serve, open_page: Callable[..., Page]
) -> None:
    page = open_page()
    state = page.open(feed_server.url)
    everything = feed_server.ids(None)
    assert state["aircraft"] == everything
    assert state["zoom"] > 4  # three airports on one coast, not the default view of the US


def test_panning_sends_a_new_viewport(feed_server: Serve, open_page: Callable[..., Page]) -> None:
    page = open_page()
    before = page.open(f"{feed_server.url}?lon=-122.2&lat=37.6&zoom=8")
    page.drag(420, 250)
    page.wait("(n) => window.unifeedMap.state().viewportsSent > n", before["viewportsSent"])
    after = page.settled()
    assert after["viewport"] != before["viewport"]
    # Dragging right and down shows what lies west and north.
    assert after["viewport"][0] < before["viewport"][0]
    assert after["viewport"][3] > before["viewport"][3]
    assert after["aircraft"] == feed_server.ids(after["viewport"])
    assert after["aircraft"] != before["aircraft"]


def test_clicking_an_aircraft_opens_its_panel(
    feed_server: Serve, open_page: Callable[..., Page]
) -> None:
    page = open_page()
    page.open(f"{feed_server.url}?lon=-121&lat=37&zoom=7")
    key, x, y = page.isolated_aircraft()
    page.page.mouse.click(x, y)
    page.wait("(key) => window.unifeedMap.state().selection === key", key)
    page.wait("() => window.unifeedMap.state().panelOpen")
    expected = feed_server.get(f"api/aircraft/{key}")
    panel = page.page.inner_text("#panel")
    assert (expected.get("ident") or key) in panel
    assert expected["access"] in panel
    assert expected["phase"] in panel
    # Its trail comes from the track endpoint (history).
    page.wait("() => window.unifeedMap.state().trail > 1")
    target = os.environ.get("MAP_SCREENSHOT")
    if target:
        time.sleep(0.5)  # the trail's first frame
        page.page.screenshot(path=target)
    page.page.click("#panel-close")
    page.wait("() => !window.unifeedMap.state().panelOpen")


def test_search_by_ident_selects_the_aircraft(
    feed_server: Serve, open_page: Callable[..., Page]
) -> None:
    page = open_page()
    page.open(f"{feed_server.url}?{WEST_COAST}")
    flights = [a for a in feed_server.get("api/aircraft")["aircraft"] if a.get("ident")]
    target = sorted(flights, key=lambda a: a["id"])[0]
    page.page.fill("#search", target["ident"])
    page.page.click(f'#results button[data-id="{target["id"]}"]', timeout=WAIT_MS)
    page.wait("(key) => window.unifeedMap.state().selection === key", target["id"])
    page.wait("() => window.unifeedMap.state().panelOpen")
    # And by flight ID: the search flies to it, and its panel names it.
    other = sorted(flights, key=lambda a: a["id"])[-1]
    page.page.fill("#search", other["id"])
    page.page.click(f'#results button[data-id="{other["id"]}"]', timeout=WAIT_MS)
    page.wait("(key) => window.unifeedMap.state().selection === key", other["id"])
    page.wait("(key) => document.querySelector('#panel').innerText.includes(key)", other["id"])


def test_public_token_never_shows_restricted_aircraft(
    feed_server: Serve, open_page: Callable[..., Page]
) -> None:
    access = {a["id"]: a["access"] for a in feed_server.get("api/aircraft", "blk-token")["aircraft"]}
    shown: dict[str, set[str]] = {}
    for token in ("pub-token", "res-token"):
        page = open_page()
        state = page.open(f"{feed_server.url}?token={token}&{WEST_COAST}")
        assert state["aircraft"] == feed_server.ids(state["viewport"], token)
        shown[token] = set(state["aircraft"])
    levels = {token: {access[key] for key in ids} for token, ids in shown.items()}
    assert levels["pub-token"] == {"public"}
    assert levels["res-token"] == {"public", "restricted"}
    assert shown["pub-token"] < shown["res-token"]
    # And by id: a public page asked to select a restricted aircraft learns nothing.
    hidden = sorted(shown["res-token"] - shown["pub-token"])[0]
    page = open_page()
    page.open(f"{feed_server.url}?token=pub-token&{WEST_COAST}")
    answer = httpx.get(
        feed_server.url + f"api/aircraft/{hidden}", headers={"Authorization": "Bearer pub-token"}
    )
    assert answer.status_code == 404


def test_unknown_token_is_said_once(feed_server: Serve, open_page: Callable[..., Page]) -> None:
    """The WebSocket handshake refuses an unknown token (401, which a browser hides); the
    page asks the HTTP API once why, says so, and shows nothing."""
    page = open_page()
    page.page.goto(f"{feed_server.url}?token=guessed&{WEST_COAST}")
    page.wait("() => window.unifeedMap && window.unifeedMap.state().errors.length > 0")
    page.wait("() => window.unifeedMap.state().ws === 'closed'")
    state = page.state()
    assert state["errors"] == ["unknown token: the server refused it"]
    assert (state["count"], state["clock"]["badge"]) == (0, "disconnected")
    assert page.page.inner_text("#toast") == "unknown token: the server refused it"
    checks = [u for u in page.requests if "/api/aircraft/" in u]
    assert len(checks) == 1, checks
    # The browser logs the refused handshake and the 401 itself; nothing else may be logged.
    page.errors = [e for e in page.errors if "401" not in e and "WebSocket connection" not in e]


def test_playback_moves_the_clock(feed_server: Serve, open_page: Callable[..., Page]) -> None:
    page = open_page()
    live = page.open(f"{feed_server.url}?{WEST_COAST}")
    end = live["clock"]["pitr"]
    page.page.click("#toggle-playback")
    start = end - 150_000
    iso = lambda ms: time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ms / 1000))  # noqa: E731
    page.page.fill("#play-from", iso(start))
    page.page.fill("#play-to", iso(end))
    page.page.select_option("#play-speed", "60")
    page.page.click("#play")
    page.wait("() => { const s = window.unifeedMap.state(); return s.source === 'playback' && s.clock.pitr !== null; }")
    first = page.state()["clock"]["pitr"]
    page.wait("(t) => window.unifeedMap.state().clock.pitr > t + 5000", first)
    second = page.state()
    start_s = start // 1000 * 1000
    assert start_s <= first < second["clock"]["pitr"] <= end
    assert second["clock"]["badge"] == "playback 60×"
    assert second["count"] > 0
    # It ends at 'to' (whole seconds in the form), having drawn that moment.
    page.wait("() => window.unifeedMap.state().playback.status === 'ended'")
    ended = page.state()
    assert ended["clock"]["pitr"] == end // 1000 * 1000
    assert ended["count"] > 0
    # Back to live: the clock returns to the feed's time.
    page.page.click("#live")
    page.wait("(t) => { const s = window.unifeedMap.state(); return s.source === 'live' && s.clock.pitr === t; }", end)


# --- live, on Kafka: follow mode -----------------------------------------------------------------


def _position(key: str, pitr: int, lon: float) -> bytes:
    record = {
        "type": "position", "pitr": pitr, "id": key, "clock": pitr, "lat": 37.0, "lon": lon,
        "alt": 35000, "gs": 450, "heading": 90, "ident": "FLW1", "air_ground": "A",
    }  # fmt: skip
    return json.dumps(record, separators=(",", ":")).encode()


class Flight:
    """An aircraft flying east, live (pitr = now), into a topic that serve follows."""

    KEY = "FLW1-1-follow"
    EMERGENCY = "EMG1-1-squawk"
    STATUS = "EMG2-1-status"  # an emergency said by the feed's emergency flag, no squawk
    VEHICLE = "KSFO-tug-1"
    BLOCKED = "SEC1-1-blocked"  # blocked from its flightplan on
    TURNS = "RST1-1-turns"  # public, until the test files a restricted flightplan

    def __init__(self, topic: str, produce: Callable[..., list[int]]) -> None:
        self.topic = topic
        self.produce = produce
        self.stop = threading.Event()
        now = int(time.time() * 1000)
        plan = {"type": "flightplan", "pitr": now, "id": self.KEY, "ident": "FLW1",
                "aircrafttype": "B738"}  # fmt: skip
        emergency = {
            "type": "position", "pitr": now, "id": self.EMERGENCY, "clock": now, "lat": 37.02,
            "lon": -120.95, "alt": 12000, "gs": 250, "heading": 270, "squawk": "7700",
            "air_ground": "A",
        }  # fmt: skip
        status = {
            "type": "position", "pitr": now, "id": self.STATUS, "clock": now, "lat": 36.96,
            "lon": -120.9, "alt": 9000, "gs": 220, "heading": 0, "emergency": True,
            "air_ground": "A",
        }  # fmt: skip
        vehicle = {
            "type": "vehicle_position", "pitr": now, "surface_id": self.VEHICLE, "clock": now,
            "lat": 36.98, "lon": -121.03, "heading": 180, "facility": "KSFO",
        }  # fmt: skip
        produce(
            topic,
            [
                (json.dumps(plan).encode(), now),
                (_position(self.KEY, now, -121.0), now),
                (json.dumps(emergency).encode(), now),
                (json.dumps(status).encode(), now),
                (json.dumps(vehicle).encode(), now),
                *self.flight(self.BLOCKED, "blocked", now, -121.05),
                *self.flight(self.TURNS, "public", now, -120.9),
            ],
        )
        self.thread = threading.Thread(target=self._fly, daemon=True)

    def flight(self, key: str, access: str, pitr: int, lon: float) -> list[tuple[bytes, int]]:
        plan = {"type": "flightplan", "pitr": pitr, "id": key, "ident": key[:4], "access": access}
        return [(json.dumps(plan).encode(), pitr), (_position(key, pitr, lon), pitr)]

    def _fly(self) -> None:
        lon = -121.0
        for _ in range(600):  # at most 2 minutes
            if self.stop.wait(0.2):
                return
            lon += 0.004
            pitr = int(time.time() * 1000)
            self.produce(self.topic, [(_position(self.KEY, pitr, lon), pitr)])


@pytest.fixture
def live_flight() -> list[Flight]:
    """The `Flight` the live server's topic is fed by (filled by `live_server`)."""
    return []


@pytest.fixture
def live_server(
    live_flight: list[Flight],
    tmp_path: Path,
    kafka_bootstrap: str,
    unique_topic: Callable[..., str],
    produce: Callable[..., list[int]],
) -> Iterator[Serve]:
    topic = unique_topic("map")
    flight = Flight(topic, produce)
    live_flight.append(flight)
    (tmp_path / "tokens").write_text("".join(f"{t} {a}\n" for t, a in TOKENS.items()))
    server = Serve(
        [
            "--input", f"kafka:{topic}", "--bootstrap-servers", kafka_bootstrap,
            "--history", "none", "--push-interval", "200ms", "--tokens", "tokens",
        ],
        tmp_path,
    )  # fmt: skip
    flight.thread.start()
    try:
        yield server
    finally:
        flight.stop.set()
        flight.thread.join(timeout=10)
        server.stop()


@pytest.mark.kafka
def test_follow_mode_stops_on_a_drag(live_server: Serve, open_page: Callable[..., Page]) -> None:
    """Following keeps the map on a live aircraft flying east; one drag ends following,
    and the map then stays where the user left it while the aircraft flies on."""
    key = Flight.KEY
    page = open_page()
    page.open(f"{live_server.url}?lon=-121&lat=37&zoom=9")
    page.wait("(key) => window.unifeedMap.state().aircraft.includes(key)", key)
    assert page.state()["clock"]["badge"] == "live"
    page.page.evaluate("(key) => window.unifeedMap.select(key)", key)
    page.wait("() => window.unifeedMap.state().panelOpen")
    page.page.click("#follow")
    assert page.state()["follow"] is True
    # Following: the map's centre moves east with the aircraft.
    centre = page.state()["center"][0]
    page.wait("(lon) => window.unifeedMap.state().center[0] > lon + 0.01", centre)
    state = page.state()
    assert abs(state["center"][0] - state["selected"]["lon"]) < 0.05
    # A drag ends it, and nothing snaps back while the aircraft flies on.
    page.drag(-300, 120)
    page.wait("() => !window.unifeedMap.state().follow")
    time.sleep(0.5)
    left = page.state()
    assert left["followEndedBy"] in ("dragstart", "movestart")
    page.wait("(n) => window.unifeedMap.state().frames > n + 3", left["frames"])
    later = page.state()
    assert later["center"] == left["center"]
    assert later["selected"]["lon"] > left["selected"]["lon"]
    # Following again, then a zoom with the wheel ends it too.
    page.page.click("#follow")
    page.wait("() => window.unifeedMap.state().follow")
    zoom = page.state()["zoom"]
    page.page.mouse.move(700, 400)
    page.page.mouse.wheel(0, -400)
    page.wait("() => !window.unifeedMap.state().follow")
    page.wait("(z) => window.unifeedMap.state().zoom > z + 0.2", zoom)
    assert page.state()["followEndedBy"] in ("wheel", "zoomstart", "movestart")
    # And the zoom buttons, and the keyboard's arrows (a pan).
    for gesture in ("button", "key"):
        page.page.click("#follow")
        page.wait("() => window.unifeedMap.state().follow")
        if gesture == "button":
            page.page.click(".maplibregl-ctrl-zoom-out")
        else:
            page.page.focus(".maplibregl-canvas")
            page.page.keyboard.press("ArrowLeft")
        page.wait("() => !window.unifeedMap.state().follow")
        assert page.state()["followEndedBy"] in ("zoomstart", "movestart", "dragstart")


@pytest.mark.kafka
def test_emergencies_are_highlighted_and_vehicles_distinct(
    live_server: Serve, open_page: Callable[..., Page]
) -> None:
    page = open_page()
    page.open(f"{live_server.url}?lon=-121&lat=37&zoom=9")
    keys = [Flight.KEY, Flight.EMERGENCY, Flight.VEHICLE]
    page.wait("(keys) => keys.every((k) => window.unifeedMap.state().aircraft.includes(k))", keys)
    state = page.state()
    page.wait("(key) => window.unifeedMap.state().aircraft.includes(key)", Flight.STATUS)
    state = page.state()
    # Squawk 7700, and the feed's emergency flag.
    assert state["emergencies"] == sorted([Flight.EMERGENCY, Flight.STATUS])
    assert state["vehicles"] == [Flight.VEHICLE]
    drawn = dict(zip(keys, page.page.evaluate("(k) => window.unifeedMap.drawnOf(k)", keys), strict=True))
    assert len({tuple(d["color"]) for d in drawn.values()}) == 3
    assert [drawn[k]["icon"] for k in keys] == ["plane", "plane", "vehicle"]
    assert [drawn[k]["ring"] for k in keys] == [False, True, False]
    # Turned by heading (clockwise from north; deck.gl turns counter-clockwise).
    assert [drawn[k]["angle"] for k in keys] == [-90, -270, -180]
    page.page.evaluate("(key) => window.unifeedMap.select(key)", Flight.EMERGENCY)
    page.wait("() => window.unifeedMap.state().panelOpen")
    page.wait("() => window.unifeedMap.state().selected !== null")
    assert page.state()["selected"]["squawk"] == "7700"
    rows = page.page.eval_on_selector_all(
        "#panel-rows dt", "(dts) => dts.map((dt) => [dt.textContent, dt.nextElementSibling.textContent, dt.nextElementSibling.className])"
    )
    shown = {label: (value, cls) for label, value, cls in rows}
    assert shown["Squawk"] == ("7700", "emergency")
    assert shown["Emergency"] == ("general", "emergency")  # what squawk 7700 means


@pytest.mark.kafka
def test_a_flight_turning_restricted_leaves_the_public_map_live(
    live_server: Serve, live_flight: list[Flight], open_page: Callable[..., Page]
) -> None:
    """Live: a blocked flight never shows on the public or the restricted page; a public
    flight that becomes restricted leaves the public page and stays on the restricted one."""
    view = "lon=-121&lat=37&zoom=9"
    public, restricted = open_page(), open_page()
    public.open(f"{live_server.url}?token=pub-token&{view}")
    restricted.open(f"{live_server.url}?token=res-token&{view}")
    for page in (public, restricted):
        page.wait("(key) => window.unifeedMap.state().aircraft.includes(key)", Flight.TURNS)
    flight = live_flight[0]
    now = int(time.time() * 1000)
    turn = {"type": "flightplan", "pitr": now, "id": Flight.TURNS, "access": "restricted"}
    flight.produce(flight.topic, [(json.dumps(turn).encode(), now)])
    public.wait("(key) => !window.unifeedMap.state().aircraft.includes(key)", Flight.TURNS)
    frames = restricted.state()["frames"]
    restricted.wait("(n) => window.unifeedMap.state().frames > n + 3", frames)
    assert Flight.TURNS in restricted.state()["aircraft"]
    for page in (public, restricted):
        ever = page.page.evaluate("() => window.unifeedMap.everDrawn()")
        assert Flight.KEY in ever
        assert Flight.BLOCKED not in ever


def test_phone_sized_window(feed_server: Serve, open_page: Callable[..., Page]) -> None:
    """On a phone-sized window the panel becomes a bottom sheet and the legend goes."""
    page = open_page(390, 780)
    page.open(f"{feed_server.url}?lon=-122.3&lat=37.6&zoom=8")
    flights = feed_server.get("api/aircraft", bbox="-123,37,-121,38.5")["aircraft"]
    page.page.evaluate("(key) => window.unifeedMap.select(key)", flights[0]["id"])
    page.wait("() => window.unifeedMap.state().panelOpen")
    panel = page.page.locator("#panel").bounding_box()
    assert panel is not None
    assert panel["width"] == 390 and panel["y"] + panel["height"] == pytest.approx(780, abs=1)
    assert not page.page.locator("#legend").is_visible()
    # The search box takes the bar's width.
    search = page.page.locator("#search").bounding_box()
    assert search is not None and search["width"] > 390 * 0.9
    # The sheet collapses to its title row and opens again.
    page.page.click("#panel-collapse")
    page.wait("() => window.unifeedMap.state().panelCollapsed")
    collapsed = page.page.locator("#panel").bounding_box()
    assert collapsed is not None and collapsed["height"] < 60 and not page.page.locator("#panel-rows").is_visible()
    page.page.click("#panel-collapse")
    assert page.page.locator("#panel").bounding_box() == panel
    # Opening playback collapses the sheet; the form fits the window above it.
    page.page.click("#toggle-playback")
    assert page.state()["panelCollapsed"]
    form = page.page.locator("#playback").bounding_box()
    sheet = page.page.locator("#panel").bounding_box()
    assert form is not None and sheet is not None
    assert form["x"] >= 0 and form["x"] + form["width"] <= 390
    assert form["y"] + form["height"] <= sheet["y"]  # no overlap
    assert page.page.locator("#play").is_visible()


# --- the base map: bundled layers, or a tile style (--tiles) ------------------------------------

#: A colour no bundled layer uses: the tile style's background.
STYLE_RGB = (200, 30, 170)
#: The bundled base map's sea.
SEA_RGB = (0x0D, 0x1B, 0x2A)


@contextlib.contextmanager
def style_server() -> Iterator[tuple[str, list[str]]]:
    """A MapLibre style (one background layer, no remote sources) served from 127.0.0.1,
    with CORS as tile servers answer it; yields its URL and the paths requested."""
    style = json.dumps({
        "version": 8, "name": "unifeed test style", "sources": {},
        "layers": [{"id": "test-background", "type": "background",
                    "paint": {"background-color": "rgb({},{},{})".format(*STYLE_RGB)}}],
    }).encode()  # fmt: skip
    asked: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            asked.append(self.path)
            found = self.path.split("?")[0] == "/style.json"
            self.send_response(200 if found else 404)
            self.send_header("Content-Type", "application/json")
            self.send_header("Access-Control-Allow-Origin", "*")
            body = style if found else b"{}"
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/style.json", asked
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def test_tiles_style_replaces_the_bundled_layers(
    feed_server: Serve, open_page: Callable[..., Page], tmp_path: Path
) -> None:
    """Without --tiles the page draws its bundled land, coastlines and airports; with
    --tiles URL it loads that style instead (and none of the bundled data), aircraft on top."""
    bundled = open_page()
    state = bundled.open(f"{feed_server.url}?{WEST_COAST}")
    assert state["style"] is None
    assert {"sea", "land", "coast", "borders", "airports"} <= set(state["layers"])
    assert any(url.endswith("/land.json") for url in bundled.requests)
    assert bundled.share_of_colour(STYLE_RGB) == 0.0
    assert bundled.share_of_colour(SEA_RGB) > 0.05
    with style_server() as (url, asked):
        workdir = tmp_path / "tiled"
        workdir.mkdir()
        feed = feed_server.log.parent / "unified.jsonl"
        tiled = Serve(["--input", str(feed), "--history", "none", "--tiles", url], workdir)
        try:
            assert httpx.get(tiled.url + "config.json", timeout=10).json() == {"style": url}
            page = open_page()
            state = page.open(f"{tiled.url}?{WEST_COAST}")
            assert state["style"] == url
            assert state["layers"] == ["test-background"]
            assert asked and set(asked) == {"/style.json"}
            assert not any(u.endswith(("/land.json", "/airports.json")) for u in page.requests)
            assert state["aircraft"] == tiled.ids(state["viewport"])
            # What the user sees is that style: its colour fills the map around the aircraft.
            assert page.share_of_colour(STYLE_RGB) > 0.5
            assert page.share_of_colour(SEA_RGB) == 0.0
        finally:
            tiled.stop()


def test_unreachable_tiles_style_falls_back_to_the_bundled_map(
    feed_server: Serve, open_page: Callable[..., Page]
) -> None:
    """A style that cannot be fetched would leave the map empty (MapLibre never loads):
    the page draws the bundled layers and the aircraft, and says why."""
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{closed.getsockname()[1]}/style.json"
    page = open_page()
    state = page.open(f"{feed_server.url}?{WEST_COAST}&style={dead}")
    assert (state["style"], state["styleWanted"]) == (None, dead)
    assert {"sea", "land", "airports"} <= set(state["layers"])
    assert state["aircraft"] == feed_server.ids(state["viewport"])
    assert [e for e in state["errors"] if "showing the bundled map" in e] == state["errors"]
    assert len(state["errors"]) == 1 and dead in state["errors"][0]
    # The browser logs the refused connection itself; nothing else may be logged.
    page.errors = [e for e in page.errors if "ERR_CONNECTION_REFUSED" not in e]


@pytest.mark.kafka
def test_clock_shows_catching_up_then_live_from_the_frames(
    tmp_path: Path,
    kafka_bootstrap: str,
    unique_topic: Callable[..., str],
    produce: Callable[..., list[int]],
    open_page: Callable[..., Page],
) -> None:
    """A feed five minutes behind the wall clock is catching up; once a record of now
    arrives it is live. The page learns both from its WebSocket frames, never by asking
    the HTTP API."""
    topic = unique_topic("mode")
    old = int(time.time() * 1000) - 5 * 60_000
    produce(topic, [(_position("OLD1-1-mode", old, -121.0), old)])
    server = Serve(
        ["--input", f"kafka:{topic}", "--bootstrap-servers", kafka_bootstrap, "--history", "none",
         "--push-interval", "200ms"],
        tmp_path,
    )  # fmt: skip
    try:
        page = open_page()
        state = page.open(f"{server.url}?lon=-121&lat=37&zoom=9")
        assert state["aircraft"] == ["OLD1-1-mode"]
        assert (state["clock"]["mode"], state["clock"]["badge"]) == ("catchup", "catching up")
        now = int(time.time() * 1000)
        produce(topic, [(_position("NOW1-1-mode", now, -120.98), now)])
        page.wait("() => window.unifeedMap.state().clock.badge === 'live'")
        state = page.state()
        assert state["clock"]["mode"] == "live" and state["clock"]["pitr"] >= now
        asked = [u for u in page.requests if "/api/aircraft" in u]
        assert asked == [], asked
    finally:
        server.stop()


# --- unifeed demo --serve -----------------------------------------------------------------------


def test_demo_serve_shows_the_live_map_and_stays_up_until_ctrl_c(
    tmp_path: Path, open_page: Callable[..., Page]
) -> None:
    """The demo's traffic on the map while it runs (live, through the outage and the
    catch-up); after the verdict the map is still served, until SIGINT."""
    stdout = (tmp_path / "demo.out").open("wb")
    stderr_path = tmp_path / "demo.err"
    stderr = stderr_path.open("wb")
    demo = subprocess.Popen(
        [
            sys.executable, "-m", "unifeed", "demo", "--serve", "--serve-port", "0",
            "--minutes", "4", "--speed", "8",
        ],
        stdin=subprocess.DEVNULL, stdout=stdout, stderr=stderr,
    )  # fmt: skip
    try:
        url = None
        deadline = time.monotonic() + 90
        while url is None and time.monotonic() < deadline:
            found = re.search(r"live map: (http://\S+)", stderr_path.read_text(errors="replace"))
            url = found.group(1) if found else None
            assert demo.poll() is None, stderr_path.read_text()
            time.sleep(0.2)
        assert url is not None, stderr_path.read_text()
        page = open_page()
        page.open(f"{url}?lon=-120&lat=38&zoom=5")
        page.wait("() => window.unifeedMap.state().count > 10")
        # The feed runs at the wall clock: its time moves, and the page says it is live.
        first = page.state()["clock"]["pitr"]
        page.wait("(t) => window.unifeedMap.state().clock.pitr > t", first)
        assert page.state()["clock"]["badge"] in ("live", "catching up")
        summary = tmp_path / "demo.out"
        deadline = time.monotonic() + 180
        while "stays up at" not in summary.read_text() and time.monotonic() < deadline:
            assert demo.poll() is None, stderr_path.read_text() + summary.read_text()
            time.sleep(0.5)
        text = summary.read_text()
        assert "verdict: PASS" in text, text
        assert httpx.get(url + "healthz", timeout=10).status_code == 200
        page.settled()
        assert page.state()["count"] > 0
        page.close(tmp_path / "demo-after-verdict.png")
        demo.send_signal(signal.SIGINT)
        assert demo.wait(timeout=60) == 0
        with pytest.raises(httpx.HTTPError):
            httpx.get(url + "healthz", timeout=5)
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.wait(timeout=30)
        stdout.close()
        stderr.close()
