"""Malformed records mixed into valid feeds (docs/guarantees.md, "Late and invalid data").

Hypothesis builds feeds of valid messages with bad records in between: random bytes,
invalid UTF-8, JSON that is not an object, wrong field types, missing required fields,
1 MB fields, unknown types, ``pitr`` going backwards, a far-future ``pitr`` (valid: it
raises the feed's floor, so the normal messages after it become backwards) and
keepalives below the floor. Which lines are invalid is decided by the independent model
in ``tests/reference.py``, never by unifeed. Every run must:

* not crash;
* dead-letter exactly the invalid lines, each with a reason, the line number (file) or
  offset (Kafka) that points at it, and ``raw``/``raw_b64`` equal to the input;
* write the reference model's unified feed, which is also a clean run of the valid lines.

The number of cases tried is printed in the session summary.
"""

from __future__ import annotations

import base64
import hashlib
import json
import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Producer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support.kafkatools import load, pitr_of, read_all, run_cli
from tests.support.reference import (
    _valid_shape,
    assert_matches_reference,
    reference_unified,
    valid_messages,
)
from unifeed import unify_lines
from unifeed.core.stages import DeadLetter

CONTROL, SURFACE = "controlstream", "surfacestream"
T0 = 1_700_000_000_000
FLIGHTS = ("F1", "F2", "F3")
TRACKS = ("S1", "S2", "S3")
MB = 1 << 20

# -- session summary ---------------------------------------------------------

CASES: Counter[str] = Counter()
KINDS: Counter[str] = Counter()


class _Summary:
    """Prints the number of hypothesis cases each property tried, at the end of the run."""

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if CASES:
            tried = ", ".join(f"{name}: {n}" for name, n in sorted(CASES.items()))
            terminalreporter.write_line(f"test_bad_input cases tried: {tried}")
        if KINDS:
            kinds = ", ".join(f"{k} {n}" for k, n in sorted(KINDS.items()))
            terminalreporter.write_line(f"test_bad_input records generated, by kind: {kinds}")


@pytest.fixture(scope="module", autouse=True)
def _summary(request: pytest.FixtureRequest) -> None:
    manager = request.config.pluginmanager
    if not manager.has_plugin("unifeed-bad-input-summary"):
        manager.register(_Summary(), "unifeed-bad-input-summary")


def _tried(name: str, record_property: Callable[[str, object], None]) -> None:
    record_property("hypothesis_cases", CASES[name])


# -- generators --------------------------------------------------------------


def line(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


REQUIRED: dict[str, dict[str, tuple[str, ...]]] = {
    CONTROL: {
        "position": ("id", "clock", "lat", "lon"),
        "flightplan": ("id", "ident"),
        "departure": ("id",),
        "arrival": ("id",),
        "cancellation": ("id",),
        "power_on": ("id", "surface_id", "facility"),
        "surface_offblock": ("id", "surface_id", "facility"),
        "surface_onblock": ("id", "surface_id", "facility"),
        "power_off": ("id", "surface_id", "facility"),
        "keepalive": (),
    },
    SURFACE: {
        "ground_position": ("surface_id", "facility", "clock", "lat", "lon"),
        "vehicle_position": ("surface_id", "facility", "clock", "lat", "lon"),
        "location_entry": ("surface_id", "facility", "location"),
        "location_exit": ("surface_id", "facility", "location"),
        "keepalive": (),
    },
}

WRONG_VALUES: dict[str, tuple[Any, ...]] = {
    # (A list or object as `type` would crash tests/reference.py, which hashes it.)
    "type": (5, None, True, 5.5, "position "),
    "pitr": (True, False, 1.5, float(T0), str(T0), None, -1, [T0], {"ms": T0}),
    "id": (True, False, [1, 2], {"x": 1}, 1.5, None),
    "surface_id": (True, ["S1"], 2.5, None),
    "facility": (5, True, None, ["KSFO"]),
    "clock": ("soon", True, None, [1]),
    "lat": ("north", True, None, [37.6]),
    "lon": ("west", False, None, {}),
    "ident": (7, None, False),
    "location": (3, None, True),
    "access": ("secret", 3, None, True, "PUBLIC"),
}

# Invalid UTF-8: a stray continuation byte, a bad two-byte sequence, an encoded surrogate.
BAD_UTF8 = (b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\x80abc")

BAD_KINDS = (
    "random_bytes",
    "utf8_in_field",
    "utf8_in_extra",
    "utf8_outside",
    "not_object",
    "truncated",
    "wrong_type",
    "missing_field",
    "huge_invalid",
    "unknown_type",
    "backwards",
    "keepalive_below",
    "deep_nesting",
)
#: Records that are valid by design, mixed in among the bad ones.
ODD_VALID = ("far_future", "huge_valid", "blank", "many_keys", "long_key")
#: Nesting depths far beyond any JSON decoder's (about 1,000 levels with the default stack).
DEEP = (2_000, 100_000)


@st.composite
def good_message(draw: st.DrawFn, feed: str, pitr: int) -> dict[str, Any]:
    kind = draw(st.sampled_from(sorted(REQUIRED[feed])))
    msg: dict[str, Any] = {"type": kind, "pitr": pitr}
    for name in REQUIRED[feed][kind]:
        if name == "id":
            msg[name] = draw(st.sampled_from(FLIGHTS))
        elif name == "surface_id":
            msg[name] = draw(st.sampled_from(TRACKS))
        elif name in ("facility", "location", "ident"):
            msg[name] = draw(st.sampled_from(["KSFO", "deice-1", "UAL1"]))
        elif name == "clock":
            msg[name] = pitr - draw(st.integers(0, 2500))
        else:  # lat, lon
            msg[name] = draw(st.floats(-90, 90, allow_nan=False, allow_infinity=False))
    if kind == "flightplan":
        access = draw(st.sampled_from([None, "public", "restricted", "blocked"]))
        if access is not None:
            msg["access"] = access
    return msg


def _with_marker(msg: dict[str, Any], field: str, payload: bytes) -> bytes:
    """``msg`` encoded, with ``payload`` spliced into the string value of ``field``."""
    return line({**msg, field: "@@MARK@@"}).replace(b"@@MARK@@", payload)


@st.composite
def bad_record(draw: st.DrawFn, feed: str, kind: str, t: int, huge: int) -> bytes:
    base = draw(good_message(feed, t))
    if kind == "random_bytes":
        raw = draw(st.binary(min_size=1, max_size=48)).replace(b"\n", b"").strip()
        return raw or b"\x00"
    if kind == "utf8_in_field":
        fields = [f for f in REQUIRED[feed][base["type"]] if f in ("id", "surface_id",
                                                                   "facility", "ident",
                                                                   "location")]
        field = draw(st.sampled_from([*fields, "type"]))
        value = base[field] if field != "type" else base["type"]
        cut = draw(st.integers(0, len(value)))
        payload = value[:cut].encode() + draw(st.sampled_from(BAD_UTF8)) + value[cut:].encode()
        return _with_marker(base, field, payload)
    if kind == "utf8_in_extra":
        return _with_marker(base, "note", b"gate " + draw(st.sampled_from(BAD_UTF8)))
    if kind == "utf8_outside":
        raw = line(base)
        at = draw(st.integers(0, len(raw)))
        return raw[:at] + draw(st.sampled_from(BAD_UTF8)) + raw[at:]
    if kind == "not_object":
        value = draw(st.sampled_from([[base], [1, 2, 3], 42, -1.5, "position", None, True, []]))
        return line(value)
    if kind == "truncated":
        raw = line(base)
        return raw[: draw(st.integers(1, len(raw) - 1))].strip() or b"{"
    if kind == "wrong_type":
        fields = ["type", "pitr", *REQUIRED[feed][base["type"]]]
        if base["type"] == "flightplan":
            fields.append("access")
        field = draw(st.sampled_from(fields))
        return line({**base, field: draw(st.sampled_from(WRONG_VALUES[field]))})
    if kind == "missing_field":
        field = draw(st.sampled_from(["type", "pitr", *REQUIRED[feed][base["type"]]]))
        return line({k: v for k, v in base.items() if k != field})
    if kind == "huge_invalid":
        if draw(st.booleans()):
            return line({**base, "type": "x" * huge})
        pos = "position" if feed == CONTROL else "ground_position"
        msg = draw(good_message(feed, t).filter(lambda m: m["type"] == pos))
        return line({**msg, "lat": "9" * huge})
    if kind == "unknown_type":
        other = sorted(REQUIRED[SURFACE if feed == CONTROL else CONTROL])
        name = draw(st.sampled_from(["teleport", "", "Position", "mapping", *other]))
        if name == "keepalive":
            name = "keep-alive"
        return line({**base, "type": name})
    if kind == "backwards":
        return line({**base, "pitr": t - draw(st.integers(1, 10_000))})
    if kind == "keepalive_below":
        return line({"type": "keepalive", "pitr": t - draw(st.integers(1, 10_000))})
    if kind == "deep_nesting":
        depth = draw(st.sampled_from(DEEP))
        nested = draw(st.sampled_from([b"[" * depth + b"]" * depth,
                                       b'{"a":' * depth + b"1" + b"}" * depth]))
        if draw(st.booleans()):
            return nested  # the whole record
        return line({**base, "extra": "@@MARK@@"}).replace(b'"@@MARK@@"', nested)
    raise AssertionError(kind)


@st.composite
def feed_lines(draw: st.DrawFn, feed: str, huge: int) -> tuple[list[bytes], list[str]]:
    """One feed's lines and what each was generated as (``good`` or a kind above)."""
    lines: list[bytes] = []
    kinds: list[str] = []
    t = T0 + draw(st.integers(0, 20))
    for _ in range(draw(st.integers(0, 30))):
        kind = draw(st.sampled_from(["good"] * 6 + list(BAD_KINDS) + list(ODD_VALID)))
        if kind == "good":
            t += draw(st.integers(0, 3))
            raw = line(draw(good_message(feed, t)))
        elif kind == "far_future":
            # Within the 24 h link TTL, which the reference model does not know; years
            # ahead: test_far_future_pitr_of_years_ahead_raises_the_floor.
            ahead = draw(st.sampled_from([60_000, 3_600_000, 20 * 3_600_000]))
            raw = line(draw(good_message(feed, t + ahead)))
        elif kind == "huge_valid":
            raw = line({**draw(good_message(feed, t)), "blob": "y" * huge})
        elif kind == "many_keys":
            keys = draw(st.sampled_from([1_000, 10_000]))
            raw = line({**draw(good_message(feed, t)), **{f"k{i}": i for i in range(keys)}})
        elif kind == "long_key":
            raw = line({**draw(good_message(feed, t)), "k" * huge: 1})
        elif kind == "blank":
            raw = draw(st.sampled_from([b"", b"   ", b"\t"]))
        else:
            raw = draw(bad_record(feed, kind, t, huge))
        lines.append(raw)
        kinds.append(kind)
    return lines, kinds


def reference_verdicts(feed: str, lines: list[bytes]) -> list[bool | None]:
    """Per line: valid (True), dead (False) or blank (None), as the reference model says."""
    verdicts: list[bool | None] = []
    floor = -1
    for raw in lines:
        stripped = raw.strip()
        if not stripped:
            verdicts.append(None)
            continue
        try:
            obj = json.loads(stripped.decode("utf-8"))
        except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
            verdicts.append(False)
            continue
        ok = _valid_shape(feed, obj) and obj["pitr"] >= floor
        if ok:
            floor = obj["pitr"]
        verdicts.append(ok)
    # The same verdicts as the model's own filter, line for line.
    kept = [r.strip() for r, v in zip(lines, verdicts, strict=True) if v]
    assert kept == [r for r, _ in valid_messages(feed, lines)]
    return verdicts


class Case:
    """One generated pair of feeds with the reference model's verdicts."""

    def __init__(self, control: tuple[list[bytes], list[str]],
                 surface: tuple[list[bytes], list[str]]) -> None:
        self.lines = {CONTROL: control[0], SURFACE: surface[0]}
        self.kinds = {CONTROL: control[1], SURFACE: surface[1]}
        self.verdicts = {f: reference_verdicts(f, self.lines[f]) for f in self.lines}
        for feed in self.lines:
            for kind, verdict in zip(self.kinds[feed], self.verdicts[feed], strict=True):
                KINDS[kind] += 1
                # Every record generated as bad for its shape is bad for the model too.
                if kind in BAD_KINDS and kind not in ("backwards", "keepalive_below"):
                    assert verdict is False, (feed, kind)
                if kind == "blank":
                    assert verdict is None

    def __repr__(self) -> str:
        def short(raw: bytes) -> str:
            return repr(raw) if len(raw) <= 200 else f"{raw[:80]!r}...<{len(raw)} bytes>"

        return "\n".join(f"{feed} line {n} ({kind}): {short(raw)}"
                         for feed in self.lines
                         for n, (raw, kind) in enumerate(zip(self.lines[feed],
                                                             self.kinds[feed], strict=True), 1))

    def valid(self, feed: str) -> list[bytes]:
        return [r for r, v in zip(self.lines[feed], self.verdicts[feed], strict=True) if v]

    def dead(self, feed: str) -> list[tuple[int, bytes]]:
        """``(1-based line number, stripped raw)`` of the lines the model refuses."""
        return [(n, r.strip()) for n, (r, v) in
                enumerate(zip(self.lines[feed], self.verdicts[feed], strict=True), 1)
                if v is False]


@st.composite
def cases(draw: st.DrawFn, huge: int) -> Case:
    return Case(draw(feed_lines(CONTROL, huge)), draw(feed_lines(SURFACE, huge)))


def raw_of(d: DeadLetter | dict[str, Any]) -> bytes:
    raw, b64 = (d.raw, d.raw_b64) if isinstance(d, DeadLetter) else (d.get("raw"), d.get("raw_b64"))
    assert (raw is None) != (b64 is None), f"exactly one of raw and raw_b64: {d}"
    if raw is not None:
        return raw.encode()
    assert b64 is not None
    decoded = base64.b64decode(b64)
    with pytest.raises(UnicodeDecodeError):
        decoded.decode("utf-8")  # raw_b64 only for what is not UTF-8
    return decoded


def assert_reason(reason: object) -> None:
    assert isinstance(reason, str) and len(reason) >= 12 and " " in reason, reason
    assert len(reason) < 2000, "the reason must not carry the record itself"


def check_file_run(case: Case, out: list[bytes], letters: list[DeadLetter]) -> None:
    control, surface = case.lines[CONTROL], case.lines[SURFACE]
    assert_matches_reference(out, reference_unified(control, surface))
    clean, clean_run = unify_lines(case.valid(CONTROL), case.valid(SURFACE))
    assert clean_run.dead_letters == []
    assert out == clean
    got: dict[tuple[str, int], DeadLetter] = {}
    for d in letters:
        assert d.line is not None and d.offset is None, d
        assert (d.feed, d.line) not in got, f"two dead letters for {d.feed} line {d.line}"
        got[(d.feed, d.line)] = d
    expected = {(f, n): raw for f in (CONTROL, SURFACE) for n, raw in case.dead(f)}
    assert set(got) == set(expected)
    for key, d in got.items():
        raw = raw_of(d)
        assert raw == expected[key], f"{key}: dead letter raw differs from the input line"
        assert case.lines[d.feed][d.line - 1].strip() == raw  # the line number points at it
        assert_reason(d.reason)


# -- (a) the file pipeline ---------------------------------------------------


def test_file_pipeline_dead_letters_exactly_the_bad_lines(
    record_property: Callable[[str, object], None],
) -> None:
    @given(cases(huge=MB))
    @settings(max_examples=250, deadline=None, report_multiple_bugs=False,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    def check(case: Case) -> None:
        CASES["file pipeline (unify_lines)"] += 1
        out, run = unify_lines(case.lines[CONTROL], case.lines[SURFACE])
        check_file_run(case, out, run.dead_letters)
        stats = run.stats()
        for feed in (CONTROL, SURFACE):
            assert stats.dead_letters[feed] == len(case.dead(feed))
            assert stats.accepted[feed] == len(case.valid(feed))

    check()
    _tried("file pipeline (unify_lines)", record_property)


def test_combine_subprocess_dead_letters_exactly_the_bad_lines(
    tmp_path: Path, record_property: Callable[[str, object], None]
) -> None:
    """`unifeed combine` on files, with --dead-letter FILE and with dead letters on stderr."""

    @given(cases(huge=MB), st.booleans())
    @settings(max_examples=12, deadline=None, report_multiple_bugs=False,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    def check(case: Case, to_stderr: bool) -> None:
        CASES["unifeed combine (files)"] += 1
        run_dir = tmp_path / uuid.uuid4().hex[:8]
        run_dir.mkdir()
        paths = {f: run_dir / f"{f}.jsonl" for f in (CONTROL, SURFACE)}
        for feed, path in paths.items():
            path.write_bytes(b"".join(raw + b"\n" for raw in case.lines[feed]))
        out_path, dead_path = run_dir / "unified.jsonl", run_dir / "dead.jsonl"
        args = ["combine", "--control", str(paths[CONTROL]), "--surface", str(paths[SURFACE]),
                "--output", str(out_path), "--quiet"]
        if not to_stderr:
            args += ["--dead-letter", str(dead_path)]
        done = run_cli(args, timeout_s=60)
        assert done.returncode == 0, done.stderr.decode(errors="replace")[-3000:]
        out = out_path.read_bytes().splitlines()
        sink = done.stderr if to_stderr else dead_path.read_bytes()
        letters = [DeadLetter(**json.loads(x)) for x in sink.splitlines() if x.strip()]
        check_file_run(case, out, letters)
        expected, _ = unify_lines(case.lines[CONTROL], case.lines[SURFACE])
        assert out == expected

    check()
    _tried("unifeed combine (files)", record_property)


def test_far_future_pitr_of_years_ahead_raises_the_floor() -> None:
    """A pitr in 2100 is valid: it is written (last), and the normal messages after it in
    its feed are below the new floor, so they are dead letters, as the model says."""
    year_2100 = 4_102_444_800_000
    control = [
        line({"type": "flightplan", "pitr": T0, "id": "F1", "ident": "UAL1",
              "access": "restricted"}),
        line({"type": "power_on", "pitr": T0 + 1, "id": "F1", "surface_id": "S1",
              "facility": "KSFO"}),
        line({"type": "departure", "pitr": year_2100, "id": "F1"}),
        line({"type": "position", "pitr": T0 + 2, "id": "F1", "clock": T0, "lat": 1, "lon": 2}),
        line({"type": "keepalive", "pitr": T0 + 3}),
    ]
    ground = {"type": "ground_position", "surface_id": "S1", "facility": "KSFO", "clock": T0,
              "lat": 1, "lon": 2}
    surface = [
        line({**ground, "pitr": T0 + 2}),
        line({"type": "vehicle_position", "pitr": year_2100 + 5, "surface_id": "V1",
              "facility": "KSFO", "clock": T0, "lat": 1, "lon": 2}),
        line({**ground, "pitr": T0 + 3}),
    ]
    case = Case((control, ["good"] * 5), (surface, ["good"] * 3))
    assert case.dead(CONTROL) == [(4, control[3]), (5, control[4])]
    assert case.dead(SURFACE) == [(3, surface[2])]
    out, run = unify_lines(control, surface)
    check_file_run(case, out, run.dead_letters)
    assert out[-2:] == [control[2], surface[1]]
    annotated = json.loads(out[2])
    assert (annotated["id"], annotated["access"]) == ("F1", "restricted")
    assert all("lower than" in d.reason for d in run.dead_letters)


# Found by the properties above, pinned as plain examples.


def test_invalid_utf8_inside_a_decoded_string_is_a_dead_letter_not_a_crash() -> None:
    good = b'{"type":"departure","pitr":%d,"id":"F1"}' % T0
    bad = b'{"type":"departure","pitr":%d,"id":"F\xff1"}' % (T0 + 1)
    out, run = unify_lines([good, bad], [])
    assert out == [good]
    assert [(d.feed, d.line, d.raw_b64) for d in run.dead_letters] == [
        (CONTROL, 2, base64.b64encode(bad).decode())
    ]


def test_invalid_utf8_in_an_unknown_field_is_a_dead_letter() -> None:
    """Such a message is not JSON text at all (a record is UTF-8 JSON), so it must not be written
    to the unified feed byte for byte."""
    good = b'{"type":"departure","pitr":%d,"id":"F1"}' % T0
    bad = b'{"type":"departure","pitr":%d,"id":"F1","note":"gate \xff"}' % (T0 + 1)
    out, run = unify_lines([good, bad], [])
    assert out == [good]
    assert [(d.feed, d.line) for d in run.dead_letters] == [(CONTROL, 2)]


# -- (b) the Kafka pipeline --------------------------------------------------


def load_feeds(bootstrap: str, feeds: dict[str, list[bytes]]) -> None:
    """Produce each topic's non-blank lines (record timestamp = pitr) with one producer."""
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5,
                         "compression.type": "lz4", "enable.idempotence": True})
    for topic, lines in feeds.items():
        producer.list_topics(topic, timeout=10)  # creates it, also when it stays empty
        for raw in lines:
            if raw.strip():
                producer.produce(topic, raw, partition=0, timestamp=pitr_of(raw))
    assert producer.flush(30) == 0, "records not delivered"


def combine_kafka(bootstrap: str, ctl: str, srf: str, out: str) -> None:
    done = run_cli(["combine", "--control", f"kafka:{ctl}", "--surface", f"kafka:{srf}",
                    "--output", f"kafka:{out}", "--bootstrap-servers", bootstrap,
                    "--instance", f"bad-{out}", "--checkpoint-topic", f"{out}.checkpoints",
                    "--status-interval", "0", "--exit-at-end"], timeout_s=90)
    assert done.returncode == 0, done.stderr.decode(errors="replace")[-3000:]


@pytest.mark.kafka
def test_kafka_pipeline_matches_file_pipeline_and_dead_letters_carry_offsets(
    kafka_bootstrap: str, record_property: Callable[[str, object], None]
) -> None:
    """Huge fields are 100 kB here: the producer's default record limit is 1 MB."""

    @given(cases(huge=100_000))
    @settings(max_examples=15, deadline=None, database=None, report_multiple_bugs=False,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    def check(case: Case) -> None:
        CASES["unifeed combine (Kafka)"] += 1
        tag = uuid.uuid4().hex[:12]
        ctl, srf, out = f"ctl-{tag}", f"srf-{tag}", f"out-{tag}"
        load_feeds(kafka_bootstrap, {ctl: case.lines[CONTROL], srf: case.lines[SURFACE]})
        combine_kafka(kafka_bootstrap, ctl, srf, out)
        expected, _ = unify_lines(case.lines[CONTROL], case.lines[SURFACE])
        assert read_all(kafka_bootstrap, out) == expected
        got: dict[tuple[str, int], dict[str, Any]] = {}
        for value in read_all(kafka_bootstrap, f"{out}.dead-letter"):
            d = json.loads(value)
            assert "line" not in d and type(d.get("offset")) is int, d
            assert (d["feed"], d["offset"]) not in got, f"duplicate dead letter {d}"
            got[(d["feed"], d["offset"])] = d
        # Offsets count the records loaded: the non-blank lines, as they are.
        wanted: dict[tuple[str, int], bytes] = {}
        for feed in (CONTROL, SURFACE):
            judged = [(r, v) for r, v in zip(case.lines[feed], case.verdicts[feed],
                                             strict=True) if v is not None]
            wanted.update({(feed, offset): raw for offset, (raw, v) in enumerate(judged)
                           if v is False})
        assert set(got) == set(wanted)
        for key, d in got.items():
            if d.get("raw_truncated"):
                # Above 512 kB as a dead letter (e.g. 100,000 levels of nesting): cut to
                # fit, with the original's size and digest.
                assert d["raw_size"] == len(wanted[key])
                assert d["raw_sha256"] == hashlib.sha256(wanted[key]).hexdigest()
                assert wanted[key].startswith(d["raw"].encode())
            else:
                assert raw_of(d) == wanted[key]
            assert_reason(d["reason"])

    check()
    _tried("unifeed combine (Kafka)", record_property)


@pytest.mark.kafka
def test_kafka_dead_letter_of_an_oversized_record_does_not_stop_combine(
    kafka_bootstrap: str,
) -> None:
    """A 300 kB record of raw control characters is invalid JSON; as a dead letter its
    ``raw`` is JSON-escaped (six bytes each), far above the producer's 1 MB record limit.
    Invalid input must never stop the process (docs/guarantees.md)."""
    tag = uuid.uuid4().hex[:12]
    ctl, srf, out = f"ctl-{tag}", f"srf-{tag}", f"out-{tag}"
    control = [
        b'{"type":"departure","pitr":%d,"id":"F1"}' % T0,
        b'{"type":"departure","pitr":%d,"id":"F1","note":"' % (T0 + 1) + b"\x01" * 300_000 + b'"}',
        b'{"type":"arrival","pitr":%d,"id":"F1"}' % (T0 + 2),
    ]
    surface = [b'{"type":"keepalive","pitr":%d}' % (T0 + 2)]
    load(kafka_bootstrap, ctl, control)
    load(kafka_bootstrap, srf, surface)
    combine_kafka(kafka_bootstrap, ctl, srf, out)
    assert read_all(kafka_bootstrap, out) == [control[0], control[2]]
    values = read_all(kafka_bootstrap, f"{out}.dead-letter")
    letters = [json.loads(v) for v in values]
    assert [(d["feed"], d["offset"]) for d in letters] == [(CONTROL, 1)]
    (d,) = letters
    assert_reason(d["reason"])
    # Cut to fit, and it says so: the beginning, the size and the digest of the original.
    assert len(values[0]) <= 1_000_000
    assert d["raw_truncated"] is True and d["raw_size"] == len(control[1])
    assert d["raw_sha256"] == hashlib.sha256(control[1]).hexdigest()
    assert len(d["raw"]) < len(control[1]) and control[1].startswith(d["raw"].encode())


@pytest.mark.kafka
def test_kafka_rerun_after_the_end_writes_no_dead_letter_again(kafka_bootstrap: str) -> None:
    """A second run of the same instance resumes at the end of its inputs and replays the
    lookback only to rebuild links: it must not dead-letter the replayed records again."""
    tag = uuid.uuid4().hex[:12]
    ctl, srf, out = f"ctl-{tag}", f"srf-{tag}", f"out-{tag}"
    control = [b'{"type":"departure","pitr":%d,"id":"F1"}' % (T0 + k) for k in range(0, 50, 2)]
    control[10:10] = [b"not json", b'{"type":"teleport","pitr":%d}' % (T0 + 30)]
    surface = [b'{"type":"keepalive","pitr":%d}' % (T0 + 60), b"[1,2]"]
    load_feeds(kafka_bootstrap, {ctl: control, srf: surface})
    combine_kafka(kafka_bootstrap, ctl, srf, out)
    first = read_all(kafka_bootstrap, f"{out}.dead-letter")
    assert sorted((json.loads(v)["feed"], json.loads(v)["offset"]) for v in first) == [
        (CONTROL, 10), (CONTROL, 11), (SURFACE, 1)]
    combine_kafka(kafka_bootstrap, ctl, srf, out)
    assert read_all(kafka_bootstrap, out) == unify_lines(control, surface)[0]
    again = read_all(kafka_bootstrap, f"{out}.dead-letter")
    assert again == first, f"the rerun wrote {len(again) - len(first)} dead letters again"
