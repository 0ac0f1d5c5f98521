"""Frame time of the live map in headless Chromium: N aircraft at 1 update per second.

Everything is real: the embedded broker (``unifeed broker``), a producer thread writing
every aircraft's next position once a second (pitr = now, so serve is live), ``unifeed
serve`` on that topic, and the page in Debian's Chromium (WebGL 2 through SwiftShader, on
the CPU). For each size the page is opened on a view that holds every aircraft, given
time to settle, then the map pans without stopping for ``--seconds`` while the updates
keep coming, and the page measures:

* the time between animation frames (mean, p50, p95, p99, max; fps);
* main-thread time per update frame (the page's handling of what the feed worker posts:
  deck.gl layers and attributes), and the long tasks (> 50 ms) the browser reports;
* how many update frames arrived.

The peer is the same page with a tenth of the aircraft (900 against 9,000): SwiftShader
is far slower than any GPU, so the absolute numbers say little, the ratio says how the page
scales. Run once:

    .venv/bin/python -m benchmarks.map_frames            # 900 and 9,000, 15 s each
    .venv/bin/python -m benchmarks.map_frames --sizes 900 9000 --seconds 15 --json out.json
    .venv/bin/python -m benchmarks.map_frames --shared 9000     # same server load, 900 vs 9,000 in view

Needs Chromium (/usr/bin/chromium) and Playwright (the test extra).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD", "1")

CHROMIUM_ARGS = [
    "--no-sandbox",
    "--use-angle=swiftshader",
    "--enable-unsafe-swiftshader",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
# The aircraft fill this box; the page's view (centre, zoom 4 at 1280x800) holds it all.
WEST, SOUTH, EAST, NORTH = -118.0, 30.0, -78.0, 46.0
CENTRE = ((WEST + EAST) / 2, (SOUTH + NORTH) / 2)


class Traffic(threading.Thread):
    """``count`` aircraft, each moving along its heading, every position once a second."""

    def __init__(self, bootstrap: str, topic: str, count: int) -> None:
        super().__init__(daemon=True, name="traffic")
        from confluent_kafka import Producer

        from unifeed.kafka.clients import producer_config

        self.producer = Producer(producer_config(bootstrap, linger_ms=20))
        self.topic = topic
        self.count = count
        self.stop = threading.Event()
        self.seconds = 0
        self.late_s = 0.0
        step = max(1, int(math.sqrt(count)))
        self.aircraft = [
            [
                f"BM{i:05d}-bench",
                SOUTH + (NORTH - SOUTH) * ((i // step) + 0.5) / step,
                WEST + (EAST - WEST) * ((i % step) + 0.5) / step,
                (i * 37) % 360,
            ]
            for i in range(count)
        ]

    def produce_round(self) -> None:
        now = int(time.time() * 1000)
        for key, lat, lon, heading in self.aircraft:
            line = (
                f'{{"type":"position","pitr":{now},"id":"{key}","clock":{now},"lat":{lat:.5f},'
                f'"lon":{lon:.5f},"alt":33000,"gs":450,"heading":{heading},"air_ground":"A"}}'
            )
            self.producer.produce(self.topic, line.encode(), timestamp=now)
            self.producer.poll(0)
        for plane in self.aircraft:  # 450 kt for one second, roughly
            rad = math.radians(plane[3])
            plane[1] += 0.002 * math.cos(rad)
            plane[2] += 0.002 * math.sin(rad) / max(0.2, math.cos(math.radians(plane[1])))
        self.producer.flush(30)

    def run(self) -> None:
        start = time.monotonic()
        for second in range(3600):  # bounded: an hour at most
            if self.stop.is_set():
                return
            self.produce_round()
            self.seconds = second + 1
            wait = start + second + 1 - time.monotonic()
            if wait > 0:
                self.stop.wait(wait)
            else:
                self.late_s = max(self.late_s, -wait)


def _start_serve(bootstrap: str, topic: str, workdir: Path) -> tuple[subprocess.Popen[bytes], str]:
    log = (workdir / "serve.log").open("wb")
    process = subprocess.Popen(
        [
            sys.executable, "-m", "unifeed", "serve", "--input", f"kafka:{topic}",
            "--bootstrap-servers", bootstrap, "--port", "0", "--history", "none",
            "--state-dir", str(workdir),
        ],
        stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        found = re.search(r"unifeed serve: (http://\S+/)", (workdir / "serve.log").read_text())
        if found:
            return process, found.group(1)
        if process.poll() is not None:
            break
        time.sleep(0.1)
    process.kill()
    raise SystemExit(f"serve did not start: {(workdir / 'serve.log').read_text()}")


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


MEASURE_JS = """async (seconds) => {
  const m = window.unifeedMap;
  const long = [];
  const observer = new PerformanceObserver((list) => {
    for (const e of list.getEntries()) long.push(e.duration);
  });
  observer.observe({ type: "longtask", buffered: false });
  const framesBefore = m.state().frames;
  const handledBefore = m.state().handleMs.length;
  // Pan without stopping: an ease over the whole run, linear, east then back west.
  const centre = m.map.getCenter();
  m.map.easeTo({ center: [centre.lng + 6, centre.lat], duration: seconds * 500, easing: (t) => t });
  setTimeout(() => m.map.easeTo({ center: [centre.lng, centre.lat], duration: seconds * 500,
                                  easing: (t) => t }), seconds * 500 + 10);
  const deltas = await m.measureFrames(seconds * 1000);
  observer.disconnect();
  const s = m.state();
  return { deltas, long, frames: s.frames - framesBefore, count: s.count, deck: m.deckMetrics(),
           handleMs: s.handleMs.slice(-(s.frames - framesBefore)) };
}"""


def measure(url: str, count: int, seconds: float, zoom: float = 4.0) -> dict[str, Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS, headless=True
        )
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 800})
            errors: list[str] = []
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.goto(f"{url}?lon={CENTRE[0]}&lat={CENTRE[1]}&zoom={zoom}")
            page.wait_for_function(
                "(n) => window.unifeedMap && window.unifeedMap.state().count >= n",
                arg=count,
                timeout=120_000,
            )
            time.sleep(5)  # settle: a few update frames at full size
            result: dict[str, Any] = page.evaluate(MEASURE_JS, seconds)
            result["errors"] = errors
        finally:
            browser.close()
    deltas = result["deltas"][1:]
    handle = result["handleMs"]
    return {
        "aircraft": result["count"],
        "seconds": seconds,
        "animation_frames": len(deltas),
        "fps": len(deltas) / (sum(deltas) / 1000),
        "frame_ms": {
            "mean": statistics.fmean(deltas),
            "p50": _percentile(deltas, 0.5),
            "p95": _percentile(deltas, 0.95),
            "p99": _percentile(deltas, 0.99),
            "max": max(deltas),
        },
        "update_frames": result["frames"],
        "main_thread_ms_per_update": {
            "mean": statistics.fmean(handle) if handle else None,
            "max": max(handle) if handle else None,
        },
        "long_tasks": {"count": len(result["long"]), "total_ms": sum(result["long"])},
        "deck_metrics": result["deck"],
        "console_errors": result["errors"],
    }


def run_shared(total: int, zooms: list[float], seconds: float) -> list[dict[str, Any]]:
    """One server and one producer with ``total`` aircraft; the page at each zoom (4: all
    of them in view; 6.3: about a tenth). The server's and the broker's
    load is the same for every zoom, so only what the page draws differs."""
    from unifeed.kafka.embedded import spawn_broker_process

    broker, bootstrap = spawn_broker_process()
    results = []
    try:
        with tempfile.TemporaryDirectory(prefix="map-bench-") as tmp:
            topic = f"map-bench-{total}-{int(time.time())}"
            traffic = Traffic(bootstrap, topic, total)
            traffic.produce_round()
            serve, url = _start_serve(bootstrap, topic, Path(tmp))
            traffic.start()
            try:
                for zoom in zooms:
                    print(f"{total} aircraft, page at zoom {zoom:g}: measuring ...", file=sys.stderr)
                    result = measure(url, 1 if zoom > 4 else int(total * 0.99), seconds, zoom)
                    result["zoom"] = zoom
                    result["producer_late_s"] = traffic.late_s
                    results.append(result)
            finally:
                traffic.stop.set()
                traffic.join(timeout=30)
                serve.terminate()
                serve.wait(timeout=30)
    finally:
        broker.terminate()
        broker.wait(timeout=30)
    return results


def run(sizes: list[int], seconds: float, updates: bool = True) -> list[dict[str, Any]]:
    """A server and a producer per size, the page showing all of them."""
    from unifeed.kafka.embedded import spawn_broker_process

    broker, bootstrap = spawn_broker_process()
    results = []
    try:
        for count in sizes:
            with tempfile.TemporaryDirectory(prefix="map-bench-") as tmp:
                topic = f"map-bench-{count}-{int(time.time())}"
                traffic = Traffic(bootstrap, topic, count)
                traffic.produce_round()  # serve rebuilds from what is there
                serve, url = _start_serve(bootstrap, topic, Path(tmp))
                if updates:
                    traffic.start()
                try:
                    print(f"{count} aircraft: measuring for {seconds:g} s ...", file=sys.stderr)
                    result = measure(url, int(count * 0.99), seconds)
                    result["producer_late_s"] = traffic.late_s
                    results.append(result)
                    print(json.dumps(result, indent=1), file=sys.stderr)
                finally:
                    traffic.stop.set()
                    if traffic.is_alive():
                        traffic.join(timeout=30)
                    serve.terminate()
                    serve.wait(timeout=30)
    finally:
        broker.terminate()
        broker.wait(timeout=30)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[900, 9000])
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument(
        "--no-updates", action="store_true",
        help="one position per aircraft and no more (the cost of drawing alone)",
    )  # fmt: skip
    parser.add_argument(
        "--shared", type=int, metavar="TOTAL",
        help="one server with TOTAL aircraft, the page at zoom 4 (all) and 6.3 (about a tenth)",
    )  # fmt: skip
    args = parser.parse_args()
    if args.shared:
        results = run_shared(args.shared, [6.3, 4.0], args.seconds)
    else:
        results = run(args.sizes, args.seconds, updates=not args.no_updates)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n")
    print(f"{'aircraft':>8} {'fps':>6} {'mean':>7} {'p50':>7} {'p95':>7} {'p99':>7} {'max':>7} "
          f"{'updates':>7} {'main/upd':>8} {'long tasks':>10}")
    for r in results:
        f = r["frame_ms"]
        h = r["main_thread_ms_per_update"]["mean"]
        print(
            f"{r['aircraft']:>8} {r['fps']:>6.1f} {f['mean']:>7.1f} {f['p50']:>7.1f} "
            f"{f['p95']:>7.1f} {f['p99']:>7.1f} {f['max']:>7.1f} {r['update_frames']:>7} "
            f"{h if h is None else round(h, 1)!s:>8} "
            f"{r['long_tasks']['count']:>4} ({r['long_tasks']['total_ms']:.0f} ms)"
        )
    if len(results) >= 2:
        small, large = results[0], results[-1]
        print(
            f"frame time mean ratio {large['aircraft']}/{small['aircraft']}: "
            f"{large['frame_ms']['mean'] / small['frame_ms']['mean']:.2f}, p95 ratio "
            f"{large['frame_ms']['p95'] / small['frame_ms']['p95']:.2f}"
        )


if __name__ == "__main__":
    main()
