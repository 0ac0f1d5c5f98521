"""Kafka adapters with no unifeed rules: feed targets, client settings, bounded reads,
seek by ``pitr``, and the brokers unifeed can start itself (the embedded mock cluster).

May import: `unifeed.core` (errors and record decoding only) and confluent-kafka.
"""

from typing import Final

#: How long a run waits for a silent broker before it ends (exit 3), by default.
DEFAULT_BROKER_TIMEOUT_S: Final = 30.0
