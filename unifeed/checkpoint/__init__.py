"""Checkpoints: the wire format of one instance's progress and its store in a Kafka
partition.

May import: `unifeed.core` and `unifeed.kafka`.
"""

from typing import Final

#: The checkpoint topic of every command, by default.
CHECKPOINT_TOPIC: Final = "unifeed.checkpoints"
