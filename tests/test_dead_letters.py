"""Invalid input goes to the dead-letter sink with a reason; the good output is untouched."""

from __future__ import annotations

import base64
import json

import pytest

from unifeed import unify_lines

GOOD_CONTROL = [
    b'{"type":"power_on","pitr":10,"id":"F1","surface_id":"S1","facility":"KSFO"}',
    b'{"type":"position","pitr":20,"id":"F1","clock":19,"lat":1,"lon":2}',
    b'{"type":"keepalive","pitr":30}',
    b'{"type":"departure","pitr":40,"id":"F1"}',
]
GOOD_SURFACE = [
    b'{"type":"ground_position","pitr":15,"surface_id":"S1","facility":"KSFO","clock":14,"lat":1,"lon":2}',
    b'{"type":"vehicle_position","pitr":25,"surface_id":"V1","facility":"KSFO","clock":24,"lat":1,"lon":2}',
]

BAD_CONTROL = [
    (b"not json", "not valid JSON"),
    (b"\xff\xfe{}", "not valid UTF-8"),
    (b"[1,2,3]", "must be a JSON object"),
    (b'{"pitr":12}', "no `type`"),
    (b'{"type":"teleport","pitr":12,"id":"F1"}', "unknown message type"),
    (b'{"type":"departure","pitr":true,"id":"F1"}', "must be an integer"),
    (b'{"type":"departure","pitr":12.5,"id":"F1"}', "must be an integer"),
    (b'{"type":"departure","pitr":"12","id":"F1"}', "must be an integer"),
    (b'{"type":"departure","id":"F1"}', "no `pitr`"),
    (b'{"type":"departure","pitr":-1,"id":"F1"}', "must not be negative"),
    (b'{"type":"power_on","pitr":12,"id":"F1","facility":"KSFO"}', "surface_id"),
    (b'{"type":"position","pitr":12,"id":"F1","clock":1,"lat":"north","lon":2}', "lat"),
    (b'{"type":"flightplan","pitr":12,"id":"F1","ident":"A","access":"secret"}', "access"),
    (b'{"type":"departure","pitr":5,"id":"F1"}', "lower than"),  # backwards (after pitr 10)
    (b'{"type":"departure","pitr":29,"id":"F1"}', "lower than"),  # below the keepalive at 30
]


def _interleave(good: list[bytes], bad: list[tuple[bytes, str]]) -> list[bytes]:
    """Bad lines placed where each would be refused for the stated reason."""
    out = [good[0]]
    for raw, _ in bad:
        if b'"pitr":29' in raw:
            continue
        out.append(raw)
    out += good[1:3]
    out.append(bad[-1][0])  # pitr 29 right after the keepalive at 30
    out += good[3:]
    return out


def test_every_bad_line_is_dead_lettered_with_reason_and_output_is_unchanged() -> None:
    control = _interleave(GOOD_CONTROL, BAD_CONTROL)
    clean, _ = unify_lines(GOOD_CONTROL, GOOD_SURFACE)
    out, run = unify_lines(control, GOOD_SURFACE)
    assert out == clean
    letters = run.dead_letters
    assert len(letters) == len(BAD_CONTROL)
    by_raw = {}
    for d in letters:
        assert d.feed == "controlstream"
        assert d.line is not None and d.offset is None
        key = d.raw.encode() if d.raw is not None else base64.b64decode(d.raw_b64 or "")
        by_raw[key] = d
        assert control[d.line - 1] == key  # line numbers are 1-based and exact
    for raw, reason in BAD_CONTROL:
        assert reason in by_raw[raw].reason, (raw, by_raw[raw].reason)
    binary = by_raw[b"\xff\xfe{}"]
    assert binary.raw is None and binary.raw_b64 == base64.b64encode(b"\xff\xfe{}").decode()
    encoded = json.loads(letters[0].encode())
    assert set(encoded) == {"feed", "line", "reason", "raw"}


@pytest.mark.parametrize(
    "raw",
    [
        b'{"type":"power_on","pitr":1,"id":"F1","surface_id":"S1","facility":"K"}',  # wrong feed
        b'{"type":"ground_position","pitr":1,"surface_id":"S1","facility":"K","clock":1,"lat":1}',
        b'{"type":"ground_position","pitr":1,"surface_id":true,"facility":"K","clock":1,"lat":1,"lon":1}',
        b'{"type":"location_entry","pitr":1,"surface_id":"S1","facility":"K"}',
    ],
)
def test_bad_surface_lines(raw: bytes) -> None:
    out, run = unify_lines(GOOD_CONTROL, [raw, *GOOD_SURFACE])
    clean, _ = unify_lines(GOOD_CONTROL, GOOD_SURFACE)
    assert out == clean
    assert [(d.feed, d.line) for d in run.dead_letters] == [("surfacestream", 1)]
