"""Kafka test scenarios shared by several test modules: combine's arguments and a long,
regular scenario whose restarts must rebuild links."""

from __future__ import annotations

from collections.abc import Callable

from tests.support.kafkatools import load
from unifeed import unify_lines


def combine_args(bootstrap: str, ctl: str, srf: str, out: str, instance: str, *extra: str) -> list[str]:
    return ["combine", "--control", f"kafka:{ctl}", "--surface", f"kafka:{srf}",
            "--output", f"kafka:{out}", "--bootstrap-servers", bootstrap, "--instance", instance,
            "--checkpoint-topic", f"{out}.checkpoints", "--status-interval", "0", *extra]


def long_scenario(minutes: int = 60) -> tuple[list[bytes], list[bytes]]:
    """Small messages, many of them: control every 100 ms, surface every 250 ms, flights
    linking and unlinking every few minutes (so a restart must rebuild links)."""
    t0 = 1_700_000_000_000
    control: list[bytes] = []
    surface: list[bytes] = []
    for k in range(minutes * 600):
        t = t0 + k * 100
        flight = b"F%d" % (k // 3000)
        if k % 3000 == 0:
            control.append(b'{"type":"flightplan","pitr":%d,"id":"%s","ident":"X","access":"%s"}'
                           % (t, flight, [b"public", b"restricted"][k // 3000 % 2]))
            control.append(b'{"type":"power_on","pitr":%d,"id":"%s","surface_id":"S%d",'
                           b'"facility":"KSFO"}' % (t, flight, k // 3000))
        elif k % 3000 == 2500:
            control.append(b'{"type":"power_off","pitr":%d,"id":"%s","surface_id":"S%d",'
                           b'"facility":"KSFO"}' % (t, flight, k // 3000))
        else:
            control.append(b'{"type":"position","pitr":%d,"id":"%s","clock":%d,"lat":1,"lon":2}'
                           % (t, flight, t - 50))
        if k % 5 in (0, 2):
            surface.append(b'{"type":"ground_position","pitr":%d,"surface_id":"S%d",'
                           b'"facility":"KSFO","clock":%d,"lat":1,"lon":2}' % (t, k // 3000, t))
    return control, surface


def loaded_long_scenario(bootstrap: str, unique_topic: Callable[..., str],
                         minutes: int) -> tuple[str, str, str, list[bytes]]:
    """`long_scenario(minutes)` loaded into fresh control and surface topics: their names,
    a fresh output topic's name and the expected output."""
    ctl, srf, out = unique_topic("ctl"), unique_topic("srf"), unique_topic("out")
    control, surface = long_scenario(minutes)
    load(bootstrap, ctl, control)
    load(bootstrap, srf, surface)
    return ctl, srf, out, unify_lines(control, surface)[0]
