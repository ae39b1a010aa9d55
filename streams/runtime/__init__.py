"""The processor runtime: one reducer interface, two shells.

The batched shell (`BatchedProcessor`) runs hot-path roles; the faust shell
(`streams.faust`) runs low-rate windowed roles and users' own agents.
"""

from onceflow.streams.runtime.batched import BatchedProcessor, ReducerError
from onceflow.streams.runtime.facts import (
    FACT_HEADER_CAUSE,
    FACT_HEADER_SEQ,
    FactGroups,
    FactRecord,
    replay_facts,
)
from onceflow.streams.runtime.fingerprint import fingerprint_items, fingerprint_partitions
from onceflow.streams.runtime.replay import PartitionCheck, ReplayCheck, verify_replay

__all__ = [
    "FACT_HEADER_CAUSE",
    "FACT_HEADER_SEQ",
    "BatchedProcessor",
    "FactGroups",
    "FactRecord",
    "PartitionCheck",
    "ReducerError",
    "ReplayCheck",
    "fingerprint_items",
    "fingerprint_partitions",
    "replay_facts",
    "verify_replay",
]
