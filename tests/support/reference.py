"""An independent, deliberately simple model of the unified feed for complete inputs.

It shares no code with unifeed: plain ``json``, whole lists, one sort. Tests compare
unifeed's output (file pipeline, Python API, Kafka) against it, and the golden files are
checked against it too, so a golden file cannot silently encode a bug.
"""

from __future__ import annotations

import heapq
import json
from collections.abc import Iterable
from typing import Any

ACCESS = ("public", "restricted", "blocked")

_ID = (str, int)
_NUM = (int, float)
_REQUIRED: dict[str, dict[str, dict[str, tuple[type, ...]]]] = {
    "controlstream": {
        "position": {"id": _ID, "clock": _NUM, "lat": _NUM, "lon": _NUM},
        "flightplan": {"id": _ID, "ident": (str,)},
        "departure": {"id": _ID},
        "arrival": {"id": _ID},
        "cancellation": {"id": _ID},
        "power_on": {"id": _ID, "surface_id": _ID, "facility": (str,)},
        "surface_offblock": {"id": _ID, "surface_id": _ID, "facility": (str,)},
        "surface_onblock": {"id": _ID, "surface_id": _ID, "facility": (str,)},
        "power_off": {"id": _ID, "surface_id": _ID, "facility": (str,)},
        "keepalive": {},
    },
    "surfacestream": {
        "ground_position": {
            "surface_id": _ID,
            "facility": (str,),
            "clock": _NUM,
            "lat": _NUM,
            "lon": _NUM,
        },
        "vehicle_position": {
            "surface_id": _ID,
            "facility": (str,),
            "clock": _NUM,
            "lat": _NUM,
            "lon": _NUM,
        },
        "location_entry": {"surface_id": _ID, "facility": (str,), "location": (str,)},
        "location_exit": {"surface_id": _ID, "facility": (str,), "location": (str,)},
        "keepalive": {},
    },
    "mappingstream": {
        "mapping": {
            "surface_id": _ID,
            "id": _ID,
            "action": (str,),
            "access": (str,),
            "facility": (str,),
        },
        "keepalive": {},
    },
}


def _valid_shape(feed: str, obj: Any) -> bool:
    if not isinstance(obj, dict):
        return False
    fields = _REQUIRED[feed].get(obj.get("type"))  # type: ignore[arg-type]
    if fields is None:
        return False
    pitr = obj.get("pitr")
    if type(pitr) is not int or pitr < 0:
        return False
    for name, types in fields.items():
        value = obj.get(name)
        if value is None or isinstance(value, bool) or not isinstance(value, types):
            return False
    if obj["type"] == "flightplan" and obj.get("access", "public") not in ACCESS:
        return False
    bad_mapping = obj["type"] == "mapping" and (
        obj["action"] not in ("link", "unlink") or obj["access"] not in ACCESS
    )
    return not bad_mapping


def valid_messages(feed: str, lines: Iterable[bytes]) -> list[tuple[bytes, dict[str, Any]]]:
    """The lines that survive validation and the pitr-order rule, with their JSON."""
    out = []
    floor = -1
    for line in lines:
        line = line.strip()
        if not line:
            continue
        try:
            obj = json.loads(line.decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError):
            # RecursionError: nested deeper than a JSON decoder goes, a dead letter.
            continue
        if not _valid_shape(feed, obj) or obj["pitr"] < floor:
            continue
        floor = obj["pitr"]
        out.append((line, obj))
    return out


def derive_mappings(control: list[tuple[bytes, dict[str, Any]]]) -> list[dict[str, Any]]:
    """mappingstream (links and unlinks only) of valid controlstream messages."""
    access: dict[Any, str] = {}
    links: dict[Any, Any] = {}  # surface_id -> flight
    out: list[dict[str, Any]] = []
    for _, m in control:
        kind = m["type"]
        if kind == "flightplan":
            new = m.get("access", "public")
            old = access.get(m["id"], "public")
            access[m["id"]] = new
            if new != old:
                for sid, (fid, fac) in list(links.items()):
                    if fid == m["id"]:
                        links[sid] = (fid, fac)
                        out.append(_mapping(m["pitr"], sid, fid, "link", new, fac))
        elif kind in ("power_on", "surface_offblock", "surface_onblock"):
            links.pop(m["surface_id"], None)
            links[m["surface_id"]] = (m["id"], m["facility"])
            a = access.get(m["id"], "public")
            out.append(_mapping(m["pitr"], m["surface_id"], m["id"], "link", a, m["facility"]))
        elif kind == "power_off":
            cur = links.get(m["surface_id"])
            if cur is not None and cur[0] == m["id"]:
                del links[m["surface_id"]]
                a = access.get(m["id"], "public")
                out.append(
                    _mapping(m["pitr"], m["surface_id"], m["id"], "unlink", a, m["facility"])
                )
    return out


def _mapping(pitr: int, sid: Any, fid: Any, action: str, access: str, fac: str) -> dict[str, Any]:
    return {
        "type": "mapping",
        "pitr": pitr,
        "surface_id": sid,
        "id": fid,
        "action": action,
        "access": access,
        "facility": fac,
    }


def reference_unified(
    control_lines: Iterable[bytes],
    surface_lines: Iterable[bytes],
    mapping_lines: Iterable[bytes] | None = None,
) -> list[tuple[bytes | None, dict[str, Any]]]:
    """The unified feed: ``(exact bytes or None when annotated, parsed JSON)`` per message."""
    control = valid_messages("controlstream", control_lines)
    surface = valid_messages("surfacestream", surface_lines)
    if mapping_lines is None:
        mappings = derive_mappings(control)
    else:
        mappings = [m for _, m in valid_messages("mappingstream", mapping_lines)]
        mappings = [m for m in mappings if m["type"] == "mapping"]
    # Mappings before surface at equal pitr; stable within each feed.
    events = sorted(
        [(m["pitr"], 0, i, m) for i, m in enumerate(mappings)]
        + [(s["pitr"], 1, i, (raw, s)) for i, (raw, s) in enumerate(surface) if s["type"] != "keepalive"],
        key=lambda e: (e[0], e[1], e[2]),
    )
    links: dict[Any, tuple[Any, str]] = {}
    annotated: list[tuple[bytes | None, dict[str, Any]]] = []
    for _, kind, _, payload in events:
        if kind == 0:
            m = payload
            if m["action"] == "link":
                links[m["surface_id"]] = (m["id"], m["access"])
            elif links.get(m["surface_id"], (None,))[0] == m["id"]:
                del links[m["surface_id"]]
            continue
        raw, s = payload
        link = links.get(s["surface_id"]) if s["type"] == "ground_position" else None
        if link is None:
            annotated.append((raw, s))
        else:
            annotated.append((None, {**s, "id": link[0], "access": link[1]}))
    rows = [(m["pitr"], 0, i, (raw, m)) for i, (raw, m) in enumerate(control) if m["type"] != "keepalive"]
    rows += [(m["pitr"], 1, i, (raw, m)) for i, (raw, m) in enumerate(annotated)]
    rows.sort(key=lambda r: (r[0], r[1], r[2]))
    return [r[3] for r in rows]


def assert_matches_reference(
    output: list[bytes], expected: list[tuple[bytes | None, dict[str, Any]]]
) -> None:
    """Unannotated messages byte for byte; annotated ones as JSON."""
    assert len(output) == len(expected), f"{len(output)} messages out, reference has {len(expected)}"
    for n, (line, (raw, obj)) in enumerate(zip(output, expected, strict=True)):
        if raw is not None:
            assert line == raw, f"message {n}: {line!r} != {raw!r}"
        else:
            assert json.loads(line) == obj, f"message {n}: {line!r} != {obj!r}"


def naive_priority_queue_merge(
    arrivals: Iterable[tuple[str, int, Any]],
) -> list[tuple[str, int, Any]]:
    """The naive combiner the design warns about: one shared priority queue, popped
    whenever it is not empty. ``arrivals`` is the order in which messages reach it."""
    heap: list[tuple[int, int, int, str, Any]] = []
    out: list[tuple[str, int, Any]] = []
    rank: dict[str, int] = {}
    for seq, (feed, pitr, item) in enumerate(arrivals):
        heapq.heappush(heap, (pitr, rank.setdefault(feed, len(rank)), seq, feed, item))
        p, _, _, f, it = heapq.heappop(heap)
        out.append((f, p, it))
    while heap:
        p, _, _, f, it = heapq.heappop(heap)
        out.append((f, p, it))
    return out


def stable_merge(feeds: Iterable[tuple[str, Iterable[tuple[int, Any]]]]) -> list[tuple[str, int, Any]]:
    """The stable merge by ``(pitr, feed rank)`` of complete feeds: ``(feed, pitr, item)``
    rows, feeds ranked in the order given, each feed's own order kept on equal keys."""
    rows = [
        (pitr, rank, seq, name, item)
        for rank, (name, entries) in enumerate(feeds)
        for seq, (pitr, item) in enumerate(entries)
    ]
    rows.sort(key=lambda r: (r[0], r[1], r[2]))
    return [(name, pitr, item) for pitr, _, _, name, item in rows]


def reference_merge(
    inputs: dict[str, list[bytes]],
) -> tuple[list[bytes], list[tuple[str, int]]]:
    """`unifeed merge` of complete inputs, modelled: ``(merged lines, dead letters as
    (feed, line number))``.

    A line (without its line ending; blank lines skipped) is accepted when it is UTF-8
    JSON, an object, with an integer ``pitr`` >= 0 not below the feed's previous accepted
    one; a keepalive is accepted and not written. Then one stable sort by
    ``(pitr, rank)`` over everything written, so ties keep the order of the inputs and,
    within one input, of its lines.
    """
    written: list[tuple[int, int, bytes]] = []
    dead: list[tuple[str, int]] = []
    for rank, (name, lines) in enumerate(inputs.items()):
        floor = -1
        for number, line in enumerate(lines, 1):
            body = line[:-1] if line.endswith(b"\n") else line
            body = body[:-1] if body.endswith(b"\r") else body
            if not body.strip():
                continue
            try:
                obj = json.loads(body.decode("utf-8"))
            except (UnicodeDecodeError, ValueError, RecursionError):
                dead.append((name, number))
                continue
            pitr = obj.get("pitr") if isinstance(obj, dict) else None
            if type(pitr) is not int or pitr < 0 or pitr < floor:
                dead.append((name, number))
                continue
            floor = pitr
            if obj.get("type") != "keepalive":
                written.append((pitr, rank, body))
    written.sort(key=lambda w: (w[0], w[1]))
    return [w[2] for w in written], dead
