"""Trust scoring: a reducer over heartbeats and attempt outcomes, on the batched shell.

Import from here; `streams.trust._impl` is private.
"""

from onceflow.streams.trust._impl.scorer import (
    NOT_THE_NODES_FAULT,
    TrustScorer,
    TrustState,
    rescore_recorded,
    score_after,
)
from onceflow.streams.trust.settings import TrustSettings

__all__ = [
    "NOT_THE_NODES_FAULT",
    "TrustScorer",
    "TrustSettings",
    "TrustState",
    "rescore_recorded",
    "score_after",
]
