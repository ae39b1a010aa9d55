"""Read models: what every read of onceflow asks (units, sessions, the inbox, wallets, limits,
nodes, decisions, and each as of a logged time), folded from the log as it arrives.

`ReadModelFold` is the pure fold, `ReadModelReader` the questions, and
`ReadModelFeed` the shell the views service runs (a whole copy per replica,
its offsets stored with its rows).
"""

from onceflow.infra.readmodel._impl.feed import (
    ReadModelFeed,
    ReadModelLagging,
    position_header,
)
from onceflow.infra.readmodel._impl.fold import ReadModelFold
from onceflow.infra.readmodel._impl.reader import ReadModelReader
from onceflow.infra.readmodel._impl.remote import (
    ReadApi,
    ReadApiError,
    ReadApiUnavailable,
    resolve_views_url,
)

__all__ = [
    "ReadApi",
    "ReadApiError",
    "ReadApiUnavailable",
    "ReadModelFeed",
    "ReadModelFold",
    "ReadModelLagging",
    "ReadModelReader",
    "position_header",
    "resolve_views_url",
]
