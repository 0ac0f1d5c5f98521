"""Checkpoint values, the checkpoint store and ``unifeed checkpoint`` (unifeed.checkpoint.store)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Producer

from unifeed.checkpoint.store import (
    CHECKPOINT_PARTITION,
    Checkpoint,
    CheckpointStore,
    FeedCheckpoint,
    OutputCheckpoint,
    decode_checkpoint,
    encode_checkpoint,
    encode_record,
)
from unifeed.core.errors import CheckpointError
from unifeed.kafka.clients import producer_config

REPO = Path(__file__).resolve().parent.parent


def _checkpoint(instance: str = "uf-a", pitr: int = 1_700_000_000_000, **kw: Any) -> Checkpoint:
    return Checkpoint(
        instance=instance,
        feeds={
            "controlstream": FeedCheckpoint(pitr=pitr, skip=2),
            "surfacestream": FeedCheckpoint(pitr=pitr - 5, skip=1),
        },
        output=OutputCheckpoint(topic="unified", partition=0, next_offset=1234),
        **kw,
    )


# --- values ------------------------------------------------------------------


def test_value_has_the_spec_shape_and_stable_key_order() -> None:
    value = encode_checkpoint(_checkpoint(generation=3, written_ms=17))
    assert value == (
        b'{"version":1,"instance":"uf-a","feeds":{'
        b'"controlstream":{"pitr":1700000000000,"skip":2},'
        b'"surfacestream":{"pitr":1699999999995,"skip":1}},'
        b'"output":{"topic":"unified","partition":0,"next_offset":1234},'
        b'"generation":3,"written_ms":17,"incarnation":""}'
    )
    key, same = encode_record(_checkpoint(generation=3, written_ms=17))
    assert (key, same) == (b"uf-a", value)
    back = decode_checkpoint(value, topic="cp", offset=4, instance="uf-a")
    assert back == _checkpoint(generation=3, written_ms=17)


def test_minimal_value_from_the_spec_decodes() -> None:
    value = b'{"version":1,"instance":"uf-a","feeds":{"controlstream":{"pitr":5,"skip":0}}}'
    checkpoint = decode_checkpoint(value, topic="cp", offset=0, instance="uf-a")
    assert checkpoint.output is None
    assert checkpoint.feeds["controlstream"] == FeedCheckpoint(pitr=5, skip=0)


@pytest.mark.parametrize(
    ("value", "words"),
    [
        (b"{not json", "is corrupt"),
        (b'{"version":1,"instance":"uf-a","feeds":{"c":{"pitr":"x","skip":0}}}', "pitr"),
        (b'{"version":1,"instance":"uf-a","feeds":{"c":{"pitr":1,"skip":-1}}}', "skip"),
        (b'{"version":2,"instance":"uf-a","feeds":{}}', "has version 2"),
        (b'{"version":1,"instance":"uf-b","feeds":{}}', "names instance 'uf-b'"),
    ],
)
def test_bad_values_name_topic_offset_and_instance(value: bytes, words: str) -> None:
    with pytest.raises(CheckpointError) as info:
        decode_checkpoint(value, topic="unifeed.checkpoints", offset=42, instance="uf-a")
    message = str(info.value)
    assert words in message
    assert "unifeed.checkpoints:0 offset 42" in message
    assert "instance 'uf-a'" in message
    assert "unifeed checkpoint reset --instance uf-a" in message


# --- store -------------------------------------------------------------------


def test_store_round_trip_and_reset(kafka_bootstrap: str, unique_topic: Any) -> None:
    with CheckpointStore(kafka_bootstrap, unique_topic("cp")) as store:
        assert store.load("uf-a") == (None, -1)  # topic does not exist yet
        first = store.write("uf-a", _checkpoint(pitr=100))
        store.write("uf-b", _checkpoint("uf-b", pitr=999))
        second = store.write("uf-a", _checkpoint(pitr=200, generation=1))
        store.write("uf-b", _checkpoint("uf-b", pitr=1000))
        assert second > first
        assert store.load("uf-a") == (_checkpoint(pitr=200, generation=1), second)
        assert store.load("uf-b")[0] == _checkpoint("uf-b", pitr=1000)
        assert store.load("uf-c") == (None, -1)
        tombstone = store.reset("uf-a")
        assert store.load("uf-a") == (None, tombstone)
        assert store.load("uf-b")[0] == _checkpoint("uf-b", pitr=1000)
        third = store.write("uf-a", _checkpoint(pitr=300))
        assert store.load("uf-a") == (_checkpoint(pitr=300), third)
        with pytest.raises(ValueError, match="expected 'uf-a'"):
            store.write("uf-a", _checkpoint("uf-b"))


def test_load_scans_back_past_transaction_markers_and_other_instances(
    kafka_bootstrap: str, unique_topic: Any
) -> None:
    topic = unique_topic("cp-tx")
    producer = Producer(producer_config(kafka_bootstrap, transactional_id=f"{topic}-writer"))
    producer.init_transactions(30)
    expected = None
    for round_ in range(12):
        producer.begin_transaction()
        producer.produce("unused-output-" + topic, b'{"pitr":1}', None, 0)
        checkpoint = _checkpoint(pitr=1000 + round_, generation=round_)
        key, value = encode_record(checkpoint)
        producer.produce(topic, value, key, CHECKPOINT_PARTITION)
        producer.commit_transaction(30)
        expected = checkpoint
    # Then a long run of another instance's checkpoints: more than the first scan window.
    for round_ in range(300):
        producer.begin_transaction()
        key, value = encode_record(_checkpoint("uf-other", pitr=round_))
        producer.produce(topic, value, key, CHECKPOINT_PARTITION)
        producer.commit_transaction(30)
    with CheckpointStore(kafka_bootstrap, topic) as store:
        checkpoint, offset = store.load("uf-a")
        assert checkpoint == expected
        other, other_offset = store.load("uf-other")
        assert other == _checkpoint("uf-other", pitr=299)
        assert other_offset > offset


def test_corrupt_latest_record_is_a_loud_error(
    kafka_bootstrap: str, unique_topic: Any, produce: Callable[..., list[int]]
) -> None:
    topic = unique_topic("cp-bad")
    with CheckpointStore(kafka_bootstrap, topic) as store:
        store.write("uf-a", _checkpoint())
        (offset,) = produce(topic, [(b'{"version":1,"instance":"uf-a"', 1)], key=b"uf-a")
        with pytest.raises(CheckpointError) as info:
            store.load("uf-a")
        assert f"{topic}:0 offset {offset}" in str(info.value)
        assert "'uf-a'" in str(info.value)
        store.reset("uf-a")
        assert store.load("uf-a")[0] is None


def test_ensure_topic(kafka_bootstrap: str, kafka_broker_kind: str, unique_topic: Any) -> None:
    topic = unique_topic("cp-new")
    with CheckpointStore(kafka_bootstrap, topic) as store:
        outcome = store.ensure_topic()
        if kafka_broker_kind == "embedded":
            assert outcome == "auto"
        else:
            assert outcome == "created"
            assert store.ensure_topic() == "exists"
        offset = store.write("uf-a", _checkpoint())
        assert store.load("uf-a") == (_checkpoint(), offset)
        assert store.ensure_topic() == "exists"


# --- CLI ---------------------------------------------------------------------


def _unifeed(*args: str, bootstrap: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "UNIFEED_BOOTSTRAP_SERVERS"}
    env["PYTHONPATH"] = str(REPO)
    if bootstrap is not None:
        env["UNIFEED_BOOTSTRAP_SERVERS"] = bootstrap
    return subprocess.run(
        [sys.executable, "-m", "unifeed", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_checkpoint_show_and_reset_commands(kafka_bootstrap: str, unique_topic: Any) -> None:
    topic = unique_topic("cp-cli")
    common = ("--instance", "uf-a", "--checkpoint-topic", topic)
    shown = _unifeed("checkpoint", "show", *common, bootstrap=kafka_bootstrap)
    assert (shown.returncode, shown.stdout) == (0, "")
    assert "no checkpoint for instance 'uf-a'" in shown.stderr
    with CheckpointStore(kafka_bootstrap, topic) as store:
        offset = store.write("uf-a", _checkpoint(generation=2, written_ms=1_700_000_000_000))
    shown = _unifeed("checkpoint", "show", *common, "--bootstrap-servers", kafka_bootstrap)
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["feeds"]["controlstream"] == {
        "pitr": 1_700_000_000_000,
        "skip": 2,
    }
    assert f"offset {offset}" in shown.stderr
    assert "generation 2, written 2023-11-14T22:13:20Z" in shown.stderr
    reset = _unifeed("checkpoint", "reset", *common, bootstrap=kafka_bootstrap)
    assert reset.returncode == 0, reset.stderr
    assert "reset: tombstone at" in reset.stderr
    shown = _unifeed("checkpoint", "show", *common, bootstrap=kafka_bootstrap)
    assert (shown.returncode, shown.stdout) == (0, "")
    assert "it was reset" in shown.stderr


def test_checkpoint_command_without_broker_is_a_usage_error() -> None:
    result = _unifeed("checkpoint", "show", "--instance", "uf-a")
    assert result.returncode == 2
    assert "--bootstrap-servers" in result.stderr
    assert "unifeed broker" in result.stderr


def test_highest_claim_is_the_greatest_rank_not_the_latest_record(
    kafka_bootstrap: str, unique_topic: Any
) -> None:
    with CheckpointStore(kafka_bootstrap, unique_topic("cp")) as store:
        store.ensure_topic()
        store.write("uf-a", _checkpoint(generation=1, incarnation="1111"))
        since = store.end_offset()
        top = store.write("uf-a", _checkpoint(generation=1, incarnation="ffff"))
        store.write("uf-b", _checkpoint("uf-b", generation=9, incarnation="ffff"))
        last = store.write("uf-a", _checkpoint(generation=1, incarnation="0000"))
        assert store.load("uf-a") == (_checkpoint(generation=1, incarnation="0000"), last)
        assert store.highest_claim("uf-a", since) == (
            _checkpoint(generation=1, incarnation="ffff"),
            top,
        )
        assert store.highest_claim("uf-a", store.end_offset()) is None
        assert store.highest_claim("uf-c", since) is None


def test_a_twin_claim_that_landed_first_and_outranks_stops_this_start(
    kafka_bootstrap: str, unique_topic: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two processes of a new name load the (absent) checkpoint at once; the twin's claim
    lands first and outranks this one, this one's lands last. This run must stop: its
    claim is the latest record, but not the greatest."""
    from unifeed.core.errors import InstanceFencedError
    from unifeed.kafka.clients import Target
    from unifeed.runtime.opening import start_output
    from unifeed.runtime.options import RuntimeOptions
    from unifeed.runtime.state import RunState

    topic, output = unique_topic("cp"), unique_topic("out")
    options = RuntimeOptions(
        bootstrap=kafka_bootstrap, instance="twin", checkpoint_topic=topic, claim_grace_s=0.2
    )
    store = CheckpointStore(kafka_bootstrap, topic)
    twin = Checkpoint(instance="twin", feeds={}, generation=1, incarnation="f" * 16)
    load = store.load
    calls: list[int] = []

    def load_then_twin_claims(instance: str) -> Any:
        found = load(instance)
        if not calls:  # the twin claims between this run's load and its claim
            CheckpointStore(kafka_bootstrap, topic).write("twin", twin)
        calls.append(1)
        return found

    monkeypatch.setattr(store, "load", load_then_twin_claims)
    try:
        with pytest.raises(InstanceFencedError, match="started at the same time"):
            start_output(
                options=options,
                output=Target(output),
                dead_target=None,
                store=store,
                feeds=("controlstream", "surfacestream"),
                state=RunState(),
            )
    finally:
        store.close()
    assert len(calls) == 1  # the rival claim was found before the resume point is read
    # This run's own claim (the only other writer's) is the latest record: reading only
    # that one let it go on.
    latest, _ = CheckpointStore(kafka_bootstrap, topic).load("twin")
    assert latest is not None and latest.generation == 1
    assert latest.incarnation != twin.incarnation
