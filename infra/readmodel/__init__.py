"""Read models: what every read of onceflow asks (units, sessions, the inbox, wallets, limits,
nodes, decisions, and each as of a logged time), folded from the log as it arrives.

`ReadModelFold` is the pure fold, `ReadModelReader` the questions, and
`ReadModelFeed` the shell the views service runs (a whole copy per replica,
its offsets stored with its rows).
"""

from onceflow.infra.readmodel._impl.feed import (
    LAYOUT,
    READ_TOPICS,
    ReadModelFeed,
    ReadModelLagging,
    position_header,
)
from onceflow.infra.readmodel._impl.fold import ReadModelFold, inbox_change, session_summary
from onceflow.infra.readmodel._impl.reader import ReadModelReader

__all__ = [
    "LAYOUT",
    "READ_TOPICS",
    "ReadModelFeed",
    "ReadModelFold",
    "ReadModelLagging",
    "ReadModelReader",
    "inbox_change",
    "position_header",
    "session_summary",
]
