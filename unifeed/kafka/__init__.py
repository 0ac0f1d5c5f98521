"""Kafka adapters with no unifeed rules: feed targets, client settings, bounded reads,
seek by ``pitr``, and the brokers unifeed can start itself (the embedded mock cluster).

May import: `unifeed.core` (errors and record decoding only) and confluent-kafka.
"""
