"""``unifeed serve`` under load: viewport updates against a full broadcast, in one run.

    .venv/bin/python -m benchmarks.serve_ws [--aircraft 9000] [--clients 100] \\
        [--peers 5] [--seconds 30] [--warmup 10] [--push-interval 1s] \\
        [--json benchmarks/results/serve.json]

The real command runs as a subprocess, ``unifeed serve --input - --history none``, fed
on stdin by this process: every aircraft sends one ``position`` a second, spread evenly
over the second, each stamped with ``pitr`` = the wall-clock millisecond it is written
(so a frame's delay is its arrival time minus the ``pitr`` of what it carries). The
aircraft sit on a uniform grid over the map.

In the same run and the same process, ``--clients`` WebSocket clients each watch a
random box covering ~10% of the aircraft, and ``--peers`` clients watch the whole map:
a full broadcast of every change (the peer of viewport filtering). Reported, after a
warm-up, over the measured seconds:

* bytes per second per viewport client and per peer client, and their ratio (target:
  viewport ≤ 15% of the full broadcast); also the size of a full snapshot per second,
  the "send everything to everyone" cost;
* CPU seconds of the serve process per push cycle (one cycle per push interval; the
  cycle's work and the ingest of that interval's records), from /proc/PID/stat; target:
  < 1 s per second, i.e. one core;
* delay from a record's write to the arrival of the frame carrying it: p50, p99, max,
  over every aircraft in every update frame of every client (target p99 ≤ 1 s).

Frames are decoded with msgspec, keeping only ``pitr`` of each upsert, so that the
clients' side costs as little CPU as it can on the shared machine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import msgspec

T_CPU = os.sysconf("SC_CLK_TCK")


class _Upsert(msgspec.Struct):
    pitr: int


class _Frame(msgspec.Struct):
    type: str
    pitr: int
    upsert: list[_Upsert] = []
    aircraft: list[_Upsert] = []
    remove: list[str] = []


_decode = msgspec.json.Decoder(_Frame).decode


def _grid(count: int) -> list[tuple[str, float, float]]:
    side = int(count**0.5) + 1
    out = []
    for i in range(count):
        row, col = divmod(i, side)
        out.append((f"F{i:05d}", -60.0 + 120.0 * row / side, -170.0 + 340.0 * col / side))
    return out


def _box(rng: random.Random, share: float) -> list[float]:
    """A box over ``share`` of the grid's area (lat -60..60, lon -170..170)."""
    side = share**0.5
    height, width = 120.0 * side, 340.0 * side
    south = rng.uniform(-60.0, 60.0 - height)
    west = rng.uniform(-170.0, 170.0 - width)
    return [west, south, west + width, south + height]


def _waiting_s(pid: int) -> float:
    """Seconds the process's threads were runnable but waiting for a CPU (schedstat)."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            total += int((task / "schedstat").read_text().split()[1])
        except (OSError, IndexError, ValueError):
            continue
    return total / 1e9


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / T_CPU


def _busy() -> tuple[int, int]:
    """(busy, total) jiffies of the whole machine, from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + fields[4]
    return sum(fields) - idle, sum(fields)


async def _feeder(process: subprocess.Popen[bytes], grid: list[tuple[str, float, float]], stop: asyncio.Event) -> int:
    """One position per aircraft per second, in 20 slices a second."""
    assert process.stdin is not None
    fd = process.stdin.fileno()
    slices = 20
    per_slice = (len(grid) + slices - 1) // slices
    second = 0
    written = 0
    start = time.monotonic()
    while not stop.is_set():
        for k in range(slices):
            due = start + second + k / slices
            await asyncio.sleep(max(0.0, due - time.monotonic()))
            now_ms = int(time.time() * 1000)
            part = grid[k * per_slice : (k + 1) * per_slice]
            wobble = (second % 10) * 1e-3
            payload = b"".join(
                b'{"type":"position","pitr":%d,"id":"%s","clock":%d,"lat":%.5f,"lon":%.5f,'
                b'"alt":35000,"gs":450,"heading":90,"ident":"%s","air_ground":"A"}\n'
                % (now_ms, key.encode(), now_ms, lat, lon + wobble, key.encode())
                for key, lat, lon in part
            )
            view = memoryview(payload)
            while view:
                done = os.write(fd, view)
                view = view[done:]
            written += len(part)
        second += 1
    return written


class _Client:
    def __init__(self, bbox: list[float], peer: bool) -> None:
        self.bbox = bbox
        self.peer = peer
        self.bytes = 0
        self.frames = 0
        self.delays: list[int] = []
        self.measuring = False


async def _client(url: str, client: _Client, stop: asyncio.Event) -> None:
    from websockets.asyncio.client import connect

    async with connect(url, max_size=None, open_timeout=30) as ws:
        await ws.send(json.dumps({"bbox": client.bbox}))
        while not stop.is_set():
            try:
                data = await asyncio.wait_for(ws.recv(), 1.0)
            except TimeoutError:
                continue
            arrived = int(time.time() * 1000)
            raw = data.encode() if isinstance(data, str) else data
            if not client.measuring:
                continue
            frame = _decode(raw)
            if frame.type != "update":
                continue
            client.bytes += len(raw)
            client.frames += 1
            client.delays.extend(arrived - a.pitr for a in frame.upsert)


def _percentile(values: list[int], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return float(ordered[min(len(ordered) - 1, int(q * len(ordered)))])


async def _run(args: argparse.Namespace) -> dict[str, Any]:
    import httpx

    grid = _grid(args.aircraft)
    port = args.port
    process = subprocess.Popen(
        [sys.executable, "-m", "unifeed._cli", "serve", "--input", "-", "--history", "none",
         "--port", str(port), "--push-interval", args.push_interval, "--stale", "1h",
         "--client-queue", "64"],
        stdin=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    stop = asyncio.Event()
    rng = random.Random(2024)
    clients = [_Client(_box(rng, args.share), False) for _ in range(args.clients)]
    clients += [_Client([-180, -90, 180, 90], True) for _ in range(args.peers)]
    feeder = asyncio.create_task(_feeder(process, grid, stop))
    try:
        base = f"http://127.0.0.1:{port}"
        async with httpx.AsyncClient(base_url=base, timeout=10) as http:
            for _ in range(300):
                try:
                    if (await http.get("/healthz")).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                await asyncio.sleep(0.1)
            tasks = [asyncio.create_task(_client(f"ws://127.0.0.1:{port}/ws", c, stop)) for c in clients]
            await asyncio.sleep(args.warmup)
            snapshot_bytes = len((await http.get("/api/aircraft")).content)
            for c in clients:
                c.measuring = True
            cpu0, t0, own0 = _cpu_s(process.pid), time.monotonic(), time.process_time()
            wait0, own_wait0, load0 = _waiting_s(process.pid), _waiting_s(os.getpid()), _busy()
            await asyncio.sleep(args.seconds)
            cpu1, t1, own1 = _cpu_s(process.pid), time.monotonic(), time.process_time()
            wait1, own_wait1, load1 = _waiting_s(process.pid), _waiting_s(os.getpid()), _busy()
            for c in clients:
                c.measuring = False
            metrics = (await http.get("/metrics")).text
        stop.set()
        written = await feeder
        await asyncio.gather(*tasks, return_exceptions=True)
    finally:
        stop.set()
        process.send_signal(signal.SIGTERM)
        try:
            process.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
    elapsed = t1 - t0
    interval_s = float(args.push_interval.rstrip("ms").rstrip("s")) / (1000 if args.push_interval.endswith("ms") else 1)
    cycles = elapsed / interval_s
    viewers = [c for c in clients if not c.peer]
    peers = [c for c in clients if c.peer]
    view_bps = statistics.mean(c.bytes / elapsed for c in viewers)
    peer_bps = statistics.mean(c.bytes / elapsed for c in peers)
    delays = [d for c in clients for d in c.delays]
    view_delays = [d for c in viewers for d in c.delays]
    result = {
        "aircraft": args.aircraft,
        "clients": args.clients,
        "peers": args.peers,
        "share": args.share,
        "push_interval": args.push_interval,
        "seconds": round(elapsed, 2),
        "records_written_total": written,
        "viewport_bytes_per_client_s": round(view_bps),
        "full_broadcast_bytes_per_client_s": round(peer_bps),
        "ratio_viewport_to_full": round(view_bps / peer_bps, 4),
        "full_snapshot_bytes": snapshot_bytes,
        "aircraft_per_viewport_frame": round(
            statistics.mean(len(c.delays) / max(1, c.frames) for c in viewers), 1
        ),
        "serve_cpu_s_per_s": round((cpu1 - cpu0) / elapsed, 3),
        "clients_process_cpu_s_per_s": round((own1 - own0) / elapsed, 3),
        "serve_waiting_for_cpu_s_per_s": round((wait1 - wait0) / elapsed, 3),
        "clients_waiting_for_cpu_s_per_s": round((own_wait1 - own_wait0) / elapsed, 3),
        "machine_busy_share": round((load1[0] - load0[0]) / max(1, load1[1] - load0[1]), 3),
        "loadavg_1min_at_end": float(Path("/proc/loadavg").read_text().split()[0]),
        "serve_cpu_s_per_cycle": round((cpu1 - cpu0) / cycles, 3),
        "delay_ms_p50": _percentile(delays, 0.50),
        "delay_ms_p99": _percentile(delays, 0.99),
        "delay_ms_max": float(max(delays)) if delays else float("nan"),
        "viewport_delay_ms_p99": _percentile(view_delays, 0.99),
        "frames_per_client_s": round(statistics.mean(c.frames for c in clients) / elapsed, 2),
        "push_cycle_cpu_s_last": float(
            next((line.split()[1] for line in metrics.splitlines()
                  if line.startswith("unifeed_serve_push_cycle_cpu_seconds ")), "nan")
        ),
        "dropped_clients": sum(
            int(line.split()[1]) for line in metrics.splitlines()
            if line.startswith("unifeed_serve_ws_dropped_total")
        ),
    }
    return result


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--aircraft", type=int, default=9000)
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--peers", type=int, default=5)
    parser.add_argument("--share", type=float, default=0.10)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--warmup", type=float, default=10.0)
    parser.add_argument("--push-interval", default="1s")
    parser.add_argument("--port", type=int, default=18765)
    parser.add_argument("--json", type=Path)
    return parser


def run(argv: list[str]) -> dict[str, Any]:
    """One measured run with these command-line arguments; the result record."""
    return asyncio.run(_run(parser().parse_args(argv)))


def main() -> None:
    args = parser().parse_args()
    result = asyncio.run(_run(args))
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        existing = json.loads(args.json.read_text()) if args.json.exists() else []
        existing.append(result)
        args.json.write_text(json.dumps(existing, indent=2) + "\n")


if __name__ == "__main__":
    main()
