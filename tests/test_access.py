"""The audience rule in unifeed._access, the one copy that dump and serve use."""

from __future__ import annotations

import doctest
import itertools

import pytest

from unifeed import _access

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
