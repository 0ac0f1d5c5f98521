"""Dead letters carry their `DeadLetterReason`; the metrics label is its value, the same
label for each kind of bad message as the reason text has always been counted under."""

from __future__ import annotations

import pytest

from unifeed.core.errors import DeadLetterReason
from unifeed.core.records import CONTROLSTREAM, SURFACESTREAM
from unifeed.core.stages import FeedIntake

CASES = [
    (b"\xff\xfe not utf-8", "not_utf8"),
    (b'{"type":"departure",', "not_json"),
    (b"[1, 2]", "not_object"),
    (b'{"pitr":5,"id":"A"}', "unknown_type"),
    (b'{"type":"teleport","pitr":5}', "unknown_type"),
    (b'{"type":"departure","id":"A"}', "bad_pitr"),
    (b'{"type":"departure","pitr":"soon","id":"A"}', "bad_pitr"),
    (b'{"type":"departure","pitr":-1,"id":"A"}', "bad_pitr"),
    (b'{"type":"departure","pitr":5}', "invalid_field"),
    (b"[" * 2000 + b"]" * 2000, "invalid_field"),
]


@pytest.mark.parametrize(("raw", "label"), CASES)
def test_each_bad_message_has_its_kind(raw: bytes, label: str) -> None:
    intake = FeedIntake(CONTROLSTREAM, where="offset")
    good, dead = intake.process([(7, raw)])
    assert not good
    [letter] = dead
    assert letter.kind.value == label
    assert letter.offset == 7 and letter.reason  # the text for people stays


def test_a_pitr_going_backwards_and_a_null_value() -> None:
    intake = FeedIntake(SURFACESTREAM, where="offset")
    ok = b'{"type":"keepalive","pitr":10}'
    good, dead = intake.process_values([ok, b'{"type":"keepalive","pitr":9}', None], lambda i: i)
    assert len(good) == 1
    assert [d.kind for d in dead] == [DeadLetterReason.PITR_BACKWARDS, DeadLetterReason.NOT_JSON]


def test_the_kind_is_not_written() -> None:
    intake = FeedIntake(CONTROLSTREAM)
    _, [letter] = intake.process([(3, b"[1]")])
    assert letter.encode() == b'{"feed":"controlstream","line":3,"reason":"' + (
        letter.reason.encode() + b'","raw":"[1]"}'
    )
