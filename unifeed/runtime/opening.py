"""The output side's start-up (`start_output`): find the checkpoint, check it against
the output and the inputs, claim the instance, initialise transactions, read the latest
checkpoint and the output tail. What it finds (`OpenedOutput`) is what the run plans
its readers from and what its `Committer` goes on with."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from confluent_kafka import Consumer

from unifeed.checkpoint.store import Checkpoint, CheckpointStore
from unifeed.core.errors import KafkaRuntimeError
from unifeed.kafka.clients import Target, consumer_config, watermarks
from unifeed.runtime.claim import InstanceClaim
from unifeed.runtime.limits import UNKNOWN_CODES
from unifeed.runtime.options import RuntimeOptions
from unifeed.runtime.saved import state_topic
from unifeed.runtime.startcheck import StartCheck, input_reaches
from unifeed.runtime.state import RunState
from unifeed.runtime.tail import OutputTail, read_tail
from unifeed.runtime.transactions import Transactions

log = logging.getLogger("unifeed")


@dataclass
class OpenedOutput:
    """A started output side: the instance claimed, transactions initialised.

    ``checkpoint`` is the one resumed from (None: a new instance, or a claim of one);
    ``next_offset`` the output offset the next record gets; ``tail`` the records an
    earlier incarnation wrote after the checkpoint (None: none).
    """

    options: RuntimeOptions
    output: Target
    dead_target: Target | None
    store: CheckpointStore
    #: The input keys with positions of their own, and every input by key.
    feeds: tuple[str, ...]
    inputs: dict[str, Target]
    state: RunState
    transactions: Transactions
    claim: InstanceClaim
    checkpoint: Checkpoint | None
    next_offset: int
    tail: OutputTail | None


def start_output(
    *,
    options: RuntimeOptions,
    output: Target,
    dead_target: Target | None,
    store: CheckpointStore,
    feeds: tuple[str, ...],
    state: RunState,
    inputs: dict[str, Target] | None = None,
) -> OpenedOutput:
    """Find the checkpoint → check it against output and inputs → claim the instance
    → ``init_transactions`` → read the latest checkpoint and the output tail.

    Everything that can refuse the start runs before the claim and
    ``init_transactions``: either of them stops a healthy incarnation of the same name.
    The producer is created first and closed again if the start fails.
    """
    inputs = dict(inputs or {})
    transactions = Transactions(options, output, state)
    try:
        claim, cp, next_offset, tail = _claim_and_resume(
            options, output, store, StartCheck(options, output, feeds, inputs), transactions
        )
    except BaseException:
        transactions.close()
        raise
    return OpenedOutput(
        options=options,
        output=output,
        dead_target=dead_target,
        store=store,
        feeds=feeds,
        inputs=inputs,
        state=state,
        transactions=transactions,
        claim=claim,
        checkpoint=cp,
        next_offset=next_offset,
        tail=tail,
    )


def _claim_and_resume(
    options: RuntimeOptions,
    output: Target,
    store: CheckpointStore,
    check: StartCheck,
    transactions: Transactions,
) -> tuple[InstanceClaim, Checkpoint | None, int, OutputTail | None]:
    """`start_output`'s steps: the claim, the checkpoint resumed from (None: none), the
    output offset the next record gets and the output tail."""
    store.ensure_topic()
    CheckpointStore(
        options.bootstrap, state_topic(options.checkpoint_topic), options.kafka_extra
    ).ensure_topic()
    reaches = input_reaches(options)
    claim = InstanceClaim(options, store)
    # The output's end before the checkpoint is read: output written by an
    # incarnation starting at the same time then comes after its first checkpoint,
    # which this load sees (so it is not taken for a foreign output).
    before = watermarks_or_empty(options, output)
    claim.mark_start()
    cp, cp_offset = store.load(options.instance)
    cp = check.rekeyed(cp)
    check.check(
        cp, cp_offset, watermarks_or_empty(options, output), reaches, output_before=before
    )
    claim.claim(cp)
    transactions.init()
    cp, cp_offset = claim.resume_point()
    cp = check.rekeyed(cp)
    # The latest record may be an older incarnation's last commit: check it too. (Not
    # the new-instance rule: a twin that claimed at the same moment and outranks this
    # one may have written output by now; the claim already decided who goes on.)
    low, high = watermarks_or_empty(options, output)
    check.check(cp, cp_offset, (low, high), reaches)
    if cp is not None and not cp.feeds:
        cp = None  # a claim of a new instance: nothing to resume from
    tail: OutputTail | None = None
    if cp is None:
        next_offset = high
    else:
        next_offset = cp.output.next_offset if cp.output is not None else high
        records = read_tail(options, output, next_offset, high)
        if records:
            tail = OutputTail(records, output, options.instance, transactions.max_record_bytes)
            log.info(
                "%s: %d output records after the checkpoint, written by an earlier "
                "run: they will be checked and not written again",
                options.instance,
                len(records),
            )
    return claim, cp, next_offset, tail


def watermarks_or_empty(options: RuntimeOptions, target: Target) -> tuple[int, int]:
    """``target``'s low and high watermarks; (0, 0) for a topic or partition that does
    not exist (yet)."""
    consumer = Consumer(consumer_config(options.bootstrap, options.kafka_extra))
    try:
        try:
            return watermarks(consumer, target)
        except KafkaRuntimeError as exc:
            if exc.code in UNKNOWN_CODES:
                return 0, 0
            raise
    finally:
        consumer.close()
