"""Positions by pitr: the offset a feed is read from for a pitr."""

from __future__ import annotations

import logging

from confluent_kafka import Consumer

from unifeed.kafka.clients import Target, consumer_config
from unifeed.kafka.seek import PitrSeek, find_offset_for_pitr
from unifeed.runtime.options import RuntimeOptions

log = logging.getLogger("unifeed")

def find_by_pitr(options: RuntimeOptions, target: Target, pitr: int) -> PitrSeek:
    consumer = Consumer(consumer_config(options.bootstrap, options.kafka_extra, fetch_wait_ms=10))
    try:
        return find_offset_for_pitr(consumer, target, max(pitr, 0))
    finally:
        consumer.close()


def offset_for_pitr(options: RuntimeOptions, target: Target, pitr: int) -> int:
    return find_by_pitr(options, target, pitr).offset
