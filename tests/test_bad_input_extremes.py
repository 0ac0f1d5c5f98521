"""Bad input at the extremes, through the real command line (docs/guarantees.md,
"Bad input at the extremes"): nesting deeper than any JSON decoder goes, 10 MB values,
long keys and many keys; dead letters carry unknown access; `--max-dead-letters` on
Kafka; padded lines; unguarded I/O ends in one line, never a traceback.
"""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from pathlib import Path

import pytest

from tests.support.kafkatools import CLI, load, read_all, run_cli
from unifeed import unify_lines

CONTROL, SURFACE = "controlstream", "surfacestream"
T0 = 1_700_000_000_000
DEPTH = 1_000


def _deep(depth: int = DEPTH) -> bytes:
    return b"[" * depth + b"]" * depth


def _departure(pitr: int, **extra: object) -> bytes:
    return json.dumps({"type": "departure", "pitr": pitr, "id": "F1", **extra},
                      separators=(",", ":")).encode()


def _control_with_deep_records() -> list[bytes]:
    """A valid record, a valid-looking one with a deep field, a deep array, a valid one."""
    deep_field = _departure(T0 + 1, extra="@@").replace(b'"@@"', _deep())
    return [_departure(T0), deep_field, _deep(), _departure(T0 + 2)]


def _no_traceback(stderr: bytes) -> None:
    assert b"Traceback" not in stderr, stderr.decode(errors="replace")[-2000:]


def _tag() -> str:
    return uuid.uuid4().hex[:12]


# -- item: JSON nested 1,000 deep --------------------------------------------


def test_deep_nesting_is_a_dead_letter_in_file_combine_and_mappings(tmp_path: Path) -> None:
    control = _control_with_deep_records()
    ctl, srf = tmp_path / "ctl.jsonl", tmp_path / "srf.jsonl"
    ctl.write_bytes(b"\n".join(control) + b"\n")
    srf.write_bytes(b'{"type":"keepalive","pitr":%d}\n' % (T0 + 2))
    out, dead = tmp_path / "out.jsonl", tmp_path / "dead.jsonl"
    done = run_cli(["combine", "--control", str(ctl), "--surface", str(srf), "--output",
                    str(out), "--dead-letter", str(dead), "--quiet"], timeout_s=60)
    _no_traceback(done.stderr)
    assert done.returncode == 0, done.stderr.decode(errors="replace")[-2000:]
    assert out.read_bytes().splitlines() == [control[0], control[3]]
    letters = [json.loads(x) for x in dead.read_bytes().splitlines()]
    assert [(d["feed"], d["line"]) for d in letters] == [(CONTROL, 2), (CONTROL, 3)]
    assert [d["raw"].encode() for d in letters] == control[1:3]
    assert all("nested too deeply" in d["reason"] for d in letters)

    mapped, mdead = tmp_path / "map.jsonl", tmp_path / "mdead.jsonl"
    done = run_cli(["mappings", "--control", str(ctl), "--output", str(mapped),
                    "--dead-letter", str(mdead), "--quiet"], timeout_s=60)
    _no_traceback(done.stderr)
    assert done.returncode == 0
    assert [json.loads(x)["line"] for x in mdead.read_bytes().splitlines()] == [2, 3]


def test_ten_megabyte_values_long_keys_and_many_keys_pass_the_file_pipeline(
    tmp_path: Path,
) -> None:
    """Valid however large: a 10 MB value, a 1 MB key, 100,000 keys; a 10 MB invalid one
    is a dead letter whose reason stays short."""
    control = [
        _departure(T0, blob="y" * (10 << 20)),
        _departure(T0 + 1, **{"k" * (1 << 20): 1}),
        _departure(T0 + 2, **{f"k{i}": i for i in range(100_000)}),
        json.dumps({"type": "x" * (10 << 20), "pitr": T0 + 3}).encode(),
        _departure(T0 + 4),
    ]
    ctl, srf = tmp_path / "ctl.jsonl", tmp_path / "srf.jsonl"
    ctl.write_bytes(b"\n".join(control) + b"\n")
    srf.write_bytes(b'{"type":"keepalive","pitr":%d}\n' % (T0 + 4))
    out, dead = tmp_path / "out.jsonl", tmp_path / "dead.jsonl"
    done = run_cli(["combine", "--control", str(ctl), "--surface", str(srf), "--output",
                    str(out), "--dead-letter", str(dead), "--quiet"], timeout_s=120)
    _no_traceback(done.stderr)
    assert done.returncode == 0
    assert out.read_bytes().splitlines() == [control[0], control[1], control[2], control[4]]
    (letter,) = [json.loads(x) for x in dead.read_bytes().splitlines()]
    assert letter["line"] == 4 and len(letter["reason"]) < 400


@pytest.mark.kafka
def test_deep_nesting_is_a_dead_letter_in_kafka_load_combine_mappings_and_dump(
    kafka_bootstrap: str, tmp_path: Path,
) -> None:
    tag = _tag()
    ctl, srf, out = f"ctl-{tag}", f"srf-{tag}", f"out-{tag}"
    control = _control_with_deep_records()
    path = tmp_path / "ctl.jsonl"
    path.write_bytes(b"\n".join(control) + b"\n")
    common = ["--bootstrap-servers", kafka_bootstrap]

    # load: refused with the lines named (exit 4), or loaded as they are when allowed.
    refused = run_cli(["load", str(path), "--topic", f"kafka:{ctl}", *common])
    _no_traceback(refused.stderr)
    assert refused.returncode == 4
    assert b"line 2: message is nested too deeply" in refused.stderr
    loaded = run_cli(["load", str(path), "--topic", f"kafka:{ctl}", "--allow-invalid", *common])
    _no_traceback(loaded.stderr)
    assert loaded.returncode == 0 and b"loaded 4 records" in loaded.stdout
    load(kafka_bootstrap, srf, [b'{"type":"keepalive","pitr":%d}' % (T0 + 2)])

    done = run_cli(["combine", "--control", f"kafka:{ctl}", "--surface", f"kafka:{srf}",
                    "--output", f"kafka:{out}", *common, "--instance", f"deep-{tag}",
                    "--checkpoint-topic", f"{out}.checkpoints", "--status-interval", "0",
                    "--exit-at-end"], timeout_s=90)
    _no_traceback(done.stderr)
    assert done.returncode == 0, done.stderr.decode(errors="replace")[-2000:]
    assert read_all(kafka_bootstrap, out) == [control[0], control[3]]
    letters = [json.loads(v) for v in read_all(kafka_bootstrap, f"{out}.dead-letter")]
    assert sorted((d["feed"], d["offset"]) for d in letters) == [(CONTROL, 1), (CONTROL, 2)]

    maps = f"map-{tag}"
    done = run_cli(["mappings", "--control", f"kafka:{ctl}", "--output", f"kafka:{maps}",
                    *common, "--instance", f"deepm-{tag}", "--checkpoint-topic",
                    f"{maps}.checkpoints", "--status-interval", "0", "--exit-at-end"],
                   timeout_s=90)
    _no_traceback(done.stderr)
    assert done.returncode == 0, done.stderr.decode(errors="replace")[-2000:]
    letters = [json.loads(v) for v in read_all(kafka_bootstrap, f"{maps}.dead-letter")]
    assert sorted(d["offset"] for d in letters) == [1, 2]

    # dump: a record that cannot be judged is hidden from an audience, printed without one.
    for audience in ("public", "blocked"):
        shown = run_cli(["dump", f"kafka:{ctl}", "--audience", audience, *common])
        _no_traceback(shown.stderr)
        assert shown.returncode == 0
        assert shown.stdout.splitlines() == [control[0], control[3]]
    shown = run_cli(["dump", f"kafka:{ctl}", *common])
    assert shown.returncode == 0 and shown.stdout.splitlines() == control
    shown = run_cli(["dump", f"kafka:{ctl}", "--from", str(T0 + 2), *common])
    assert shown.returncode == 0 and shown.stdout.splitlines() == [control[3]]
    assert unify_lines(control, [])[0] == [control[0], control[3]]


# -- item: --max-dead-letters on Kafka -----------------------------------------


@pytest.mark.kafka
def test_max_dead_letters_stops_kafka_combine_and_mappings_with_exit_4(
    kafka_bootstrap: str,
) -> None:
    """Beyond the limit: exit 4 with one line, after committing what was processed
    (the dead letters are in their topic once); a rerun resumes and finishes."""
    tag = _tag()
    ctl, srf, out = f"ctl-{tag}", f"srf-{tag}", f"out-{tag}"
    control = [_departure(T0 + i) for i in range(10)]
    for i in (2, 4, 5, 7, 8):
        control[i] = b"bad %d" % i
    load(kafka_bootstrap, ctl, control)
    load(kafka_bootstrap, srf, [b'{"type":"keepalive","pitr":%d}' % (T0 + 9)])
    common = ["--bootstrap-servers", kafka_bootstrap, "--status-interval", "0", "--exit-at-end"]

    def combine(*extra: str) -> tuple[int, str]:
        done = run_cli(["combine", "--control", f"kafka:{ctl}", "--surface", f"kafka:{srf}",
                        "--output", f"kafka:{out}", "--instance", f"max-{tag}",
                        "--checkpoint-topic", f"{out}.checkpoints", *common, *extra],
                       timeout_s=90)
        _no_traceback(done.stderr)
        return done.returncode, done.stderr.decode(errors="replace")

    code, err = combine("--max-dead-letters", "2")
    assert code == 4, err[-2000:]
    assert "5 dead letters exceed --max-dead-letters 2" in err
    letters = [json.loads(v) for v in read_all(kafka_bootstrap, f"{out}.dead-letter")]
    assert [d["offset"] for d in letters] == [2, 4, 5, 7, 8]
    code, err = combine()
    assert code == 0, err[-2000:]
    assert read_all(kafka_bootstrap, out) == unify_lines(control, [])[0]
    assert len(read_all(kafka_bootstrap, f"{out}.dead-letter")) == 5  # not written again

    maps = f"map-{tag}"
    done = run_cli(["mappings", "--control", f"kafka:{ctl}", "--output", f"kafka:{maps}",
                    "--instance", f"maxm-{tag}", "--checkpoint-topic", f"{maps}.checkpoints",
                    *common, "--max-dead-letters", "0"], timeout_s=90)
    _no_traceback(done.stderr)
    assert done.returncode == 4, done.stderr.decode(errors="replace")[-2000:]
    assert b"exceed --max-dead-letters 0" in done.stderr


def test_max_dead_letters_stops_file_combine_with_exit_4(tmp_path: Path) -> None:
    control = [_departure(T0 + i) for i in range(10)]
    for i in (2, 4, 5, 7, 8):
        control[i] = b"bad %d" % i
    ctl, srf = tmp_path / "ctl.jsonl", tmp_path / "srf.jsonl"
    ctl.write_bytes(b"\n".join(control) + b"\n")
    srf.write_bytes(b'{"type":"keepalive","pitr":%d}\n' % (T0 + 9))
    done = run_cli(["combine", "--control", str(ctl), "--surface", str(srf), "--output",
                    str(tmp_path / "out.jsonl"), "--dead-letter", str(tmp_path / "dead.jsonl"),
                    "--max-dead-letters", "2"], timeout_s=60)
    _no_traceback(done.stderr)
    assert done.returncode == 4
    assert b"dead letters exceed --max-dead-letters 2" in done.stderr


# -- item: dump --audience of dead letters -------------------------------------


@pytest.mark.kafka
def test_dump_audience_shows_dead_letters_to_blocked_only(kafka_bootstrap: str) -> None:
    """Dead letters carry input of unknown access (here a restricted flight's records):
    they count as `blocked`, by their topic's name and, in any topic, by their shape."""
    tag = _tag()
    ctl, srf, out = f"ctl-{tag}", f"srf-{tag}", f"out-{tag}"
    control = [
        b'{"type":"flightplan","pitr":%d,"id":"F9","ident":"SECRET1","access":"restricted"}'
        % T0,
        b'{"type":"position","pitr":%d,"id":"F9","clock":1,"lat":"north","lon":2}' % (T0 + 1),
        b'{"type":"teleport","pitr":%d,"id":"F9","ident":"SECRET1"}' % (T0 + 2),
        b'{"type":"departure","pitr":%d,"id":"F9"}' % (T0 + 3),
    ]
    load(kafka_bootstrap, ctl, control)
    load(kafka_bootstrap, srf, [b'{"type":"keepalive","pitr":%d}' % (T0 + 3)])
    common = ["--bootstrap-servers", kafka_bootstrap]
    done = run_cli(["combine", "--control", f"kafka:{ctl}", "--surface", f"kafka:{srf}",
                    "--output", f"kafka:{out}", *common, "--instance", f"dl-{tag}",
                    "--checkpoint-topic", f"{out}.checkpoints", "--status-interval", "0",
                    "--exit-at-end"], timeout_s=90)
    assert done.returncode == 0, done.stderr.decode(errors="replace")[-2000:]
    letters = read_all(kafka_bootstrap, f"{out}.dead-letter")
    assert len(letters) == 2
    other = f"other-{tag}"  # dead letters under a name that does not say so
    load(kafka_bootstrap, other, [control[0], *letters])
    for topic, shown_to_all in ((f"{out}.dead-letter", []), (other, [control[0]])):
        for audience in ("public", "restricted"):
            shown = run_cli(["dump", f"kafka:{topic}", "--audience", audience, *common])
            assert shown.returncode == 0, shown.stderr
            expected = shown_to_all if audience == "restricted" else []
            assert shown.stdout.splitlines() == expected, (topic, audience)
        shown = run_cli(["dump", f"kafka:{topic}", "--audience", "blocked", *common])
        assert shown.returncode == 0
        assert shown.stdout.splitlines() == [*shown_to_all, *letters]


# -- item: one-line errors instead of tracebacks --------------------------------


def _one_line_error(done: subprocess.CompletedProcess[bytes], code: int) -> str:
    _no_traceback(done.stderr)
    assert done.returncode == code, done.stderr.decode(errors="replace")[-2000:]
    lines = done.stderr.decode().strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("unifeed "), lines
    return lines[0]


@pytest.mark.kafka
def test_load_refuses_a_line_larger_than_a_record_may_be(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    tag = _tag()
    path = tmp_path / "big.jsonl"
    path.write_bytes(_departure(T0) + b"\n" + _departure(T0 + 1, blob="y" * (1 << 20)) + b"\n")
    for extra in ([], ["--allow-invalid"]):
        done = run_cli(["load", str(path), "--topic", f"kafka:big-{tag}",
                        "--bootstrap-servers", kafka_bootstrap, *extra])
        line = _one_line_error(done, 4)
        assert "line 2: 1,048,6" in line and "1,000,000 bytes" in line, line
        assert "nothing was loaded" in line
    assert read_all(kafka_bootstrap, f"big-{tag}", timeout_s=5) == []


def test_closed_stdin_and_full_disk_end_in_one_line(tmp_path: Path) -> None:
    ctl, srf = tmp_path / "ctl.jsonl", tmp_path / "srf.jsonl"
    ctl.write_bytes(_departure(T0) + b"\nnot json\n")
    srf.write_bytes(b'{"type":"keepalive","pitr":%d}\n' % T0)
    files = ["--control", str(ctl), "--surface", str(srf)]

    closed = run_cli(["combine", "--control", "-", "--surface", str(srf), "--output",
                      str(tmp_path / "o.jsonl")], preexec_fn=lambda: os.close(0))
    assert "standard input is closed" in _one_line_error(closed, 2)

    full = run_cli(["combine", *files, "--output", "/dev/full", "--quiet",
                    "--dead-letter", str(tmp_path / "d.jsonl")])
    assert "cannot write /dev/full" in _one_line_error(full, 1)
    full = run_cli(["combine", *files, "--output", str(tmp_path / "o.jsonl"), "--quiet",
                    "--dead-letter", "/dev/full"])
    assert "cannot write /dev/full" in _one_line_error(full, 1)
    with open("/dev/full", "wb") as dev_full:
        full = subprocess.run([*CLI, "combine", *files, "--output", "-", "--quiet",
                               "--dead-letter", str(tmp_path / "d.jsonl")],
                              stdout=dev_full, stderr=subprocess.PIPE, timeout=60, check=False)
    assert "No space left on device" in _one_line_error(full, 1)


# -- item: padded lines ----------------------------------------------------------


@pytest.mark.kafka
def test_padded_lines_give_the_same_output_from_files_and_from_kafka(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    """A line is a message as `unifeed load` makes it a record: only its line ending goes,
    spaces and tabs around it stay, on both paths; the outputs and dead letters agree."""
    control = [
        b'  {"type":"flightplan","pitr":%d,"id":"F1","ident":"UAL1","access":"restricted"}'
        % T0,
        b'{"type":"power_on","pitr":%d,"id":"F1","surface_id":"S1","facility":"KSFO"}\t\t'
        % (T0 + 1),
        b"  not json \t",
        b'\t{"type":"departure","pitr":%d,"id":"F1"} \r' % (T0 + 3),  # + "\n": CRLF
        b" \t ",  # blank
    ]
    surface = [
        b'\t{"type":"ground_position","pitr":%d,"surface_id":"S1","facility":"KSFO",'
        b'"clock":1,"lat":1.5,"lon":2.5}  ' % (T0 + 2),
        b'  {"type":"vehicle_position","pitr":%d,"surface_id":"V1","facility":"KSFO",'
        b'"clock":1,"lat":1.5,"lon":2.5}\t' % (T0 + 2),
        b' {"type":"keepalive","pitr":%d} ' % (T0 + 3),
    ]
    ctl, srf = tmp_path / "ctl.jsonl", tmp_path / "srf.jsonl"
    ctl.write_bytes(b"\n".join(control) + b"\n")
    srf.write_bytes(b"\n".join(surface) + b"\n")
    out, dead = tmp_path / "out.jsonl", tmp_path / "dead.jsonl"
    done = run_cli(["combine", "--control", str(ctl), "--surface", str(srf), "--output",
                    str(out), "--dead-letter", str(dead), "--quiet"], timeout_s=60)
    assert done.returncode == 0, done.stderr.decode(errors="replace")[-2000:]
    from_files = out.read_bytes().splitlines()

    tag = _tag()
    common = ["--bootstrap-servers", kafka_bootstrap]
    for path, topic in ((ctl, f"ctl-{tag}"), (srf, f"srf-{tag}")):
        loaded = run_cli(["load", str(path), "--topic", f"kafka:{topic}", "--allow-invalid",
                          *common])
        assert loaded.returncode == 0, loaded.stderr
    done = run_cli(["combine", "--control", f"kafka:ctl-{tag}", "--surface",
                    f"kafka:srf-{tag}", "--output", f"kafka:out-{tag}", *common, "--instance",
                    f"pad-{tag}", "--checkpoint-topic", f"out-{tag}.checkpoints",
                    "--status-interval", "0", "--exit-at-end"], timeout_s=90)
    assert done.returncode == 0, done.stderr.decode(errors="replace")[-2000:]
    assert read_all(kafka_bootstrap, f"out-{tag}") == from_files
    file_raw = [json.loads(x)["raw"] for x in dead.read_bytes().splitlines()]
    kafka_raw = [json.loads(v)["raw"] for v in read_all(kafka_bootstrap, f"out-{tag}.dead-letter")]
    assert file_raw == kafka_raw == [control[2].decode()]
    # Kept as they are: the vehicle position passes through with its padding.
    assert surface[1] in from_files
    assert control[3][:-1] in from_files  # the CRLF line without its "\r"


def test_demo_verification_reads_past_a_record_nested_too_deeply() -> None:
    """The demo's checks of an output judge a record they cannot decode instead of dying."""
    from unifeed.demo.verify import public_view, verify_access, verify_audience, verify_output

    good = [_departure(T0), _departure(T0 + 1)]
    deep = _control_with_deep_records()[1]  # a departure with a field nested too deeply
    got = [good[0], deep, good[1]]
    verdicts = verify_output(got, good)
    assert not all(v.ok for v in verdicts)  # an extra record is found, not a crash
    verify_access(got)
    shown = public_view(got)
    assert deep not in shown
    verify_audience(got, shown)
