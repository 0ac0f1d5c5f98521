"""The audience rule in unifeed.core.access, the one copy that dump and serve use."""

from __future__ import annotations

import doctest
import itertools
from typing import Any

import pytest

import unifeed.core.access as _access

LEVELS = [None, "public", "restricted", "blocked", "secret", 3]
# The rule spelled out: absent is public, an unknown value is blocked.
RANK = {None: 0, "public": 0, "restricted": 1, "blocked": 2, "secret": 2, 3: 2}


def test_doctests() -> None:
    result = doctest.testmod(_access)
    assert result.attempted > 0 and result.failed == 0


@pytest.mark.parametrize(("own", "flight"), list(itertools.product(LEVELS, LEVELS)))
def test_visible_is_max_of_own_and_flight_at_most_audience(own: object, flight: object) -> None:
    for audience, limit in (("public", 0), ("restricted", 1), ("blocked", 2)):
        expected = max(RANK[own], RANK[flight]) <= limit
        assert _access.visible(own, flight, audience) is expected
        assert _access.visible(own, flight, limit) is expected


def test_unknown_audience_is_an_error() -> None:
    with pytest.raises(ValueError, match="audience must be one of public, restricted, blocked"):
        _access.audience_rank("everyone")


AUDIENCE_CASES = [
    b'{"type":"flightplan","pitr":1,"id":"F1","ident":"X","access":"restricted"}',
    b'{"type":"flightplan","pitr":1,"id":"F2","ident":"Y"}',
    b'{"type":"flightplan","pitr":1,"id":"F3","ident":"Z","access":"blocked"}',
    # own access public, flight restricted: hidden (the demo once showed it)
    b'{"type":"ground_position","pitr":2,"surface_id":"S1","id":"F1","access":"public"}',
    b'{"type":"ground_position","pitr":2,"surface_id":"S1","id":"F1","access":"restricted"}',
    b'{"type":"ground_position","pitr":3,"surface_id":"S2","id":"F2","access":"public"}',
    b'{"type":"ground_position","pitr":3,"surface_id":"S2","id":"F2","access":"secret"}',
    b'{"type":"ground_position","pitr":4,"surface_id":"S3"}',
    b'{"type":"position","pitr":5,"id":"F1","clock":5,"lat":1,"lon":2}',
    b'{"type":"position","pitr":5,"id":"F3","clock":5,"lat":1,"lon":2}',
    b'{"type":"position","pitr":5,"id":"F2","clock":5,"lat":1,"lon":2}',
    b'{"type":"flightplan","pitr":6,"id":"F1","ident":"X"}',
    b'{"type":"position","pitr":7,"id":"F1","clock":7,"lat":1,"lon":2}',
    b'not json',
]


@pytest.mark.kafka
def test_dump_and_the_demo_apply_one_audience_rule(
    kafka_bootstrap: str, unique_topic: Any, produce: Any
) -> None:
    """`dump --audience public` and the demo's public view show the same records: both
    judge with `FlightLevels` (a record's own `public` never unhides a restricted flight)."""
    import io

    from unifeed.cli.kafka import dump_partition
    from unifeed.demo.verify import public_view
    from unifeed.kafka.clients import Target

    topic = unique_topic("aud")
    produce(topic, [(line, i + 1) for i, line in enumerate(AUDIENCE_CASES)])
    out = io.BytesIO()
    dump_partition(Target(topic, 0), kafka_bootstrap, out, audience="public")
    shown = out.getvalue().splitlines()
    assert shown == public_view(AUDIENCE_CASES)
    assert shown == [AUDIENCE_CASES[i] for i in (1, 5, 7, 10, 11, 12)]
