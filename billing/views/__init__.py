"""ksql-style views over the ledger: DuckDB sink, statements, pull and push queries, HTTP API.

Import from here; `billing.views._impl` is private.
"""

from onceflow.billing.views._impl.engine import (
    BUILTIN_VIEWS,
    LEDGER_COLUMNS,
    QueryResult,
    ViewEngine,
)
from onceflow.billing.views._impl.server import DELIMITED, create_app, encode_row
from onceflow.billing.views._impl.service import PushQuery, QueryHeader, ViewService
from onceflow.billing.views._impl.sink import LedgerSink, line_item_batch
from onceflow.billing.views._impl.statements import Statement, StatementError, parse_statements

__all__ = [
    "BUILTIN_VIEWS",
    "DELIMITED",
    "LEDGER_COLUMNS",
    "LedgerSink",
    "PushQuery",
    "QueryHeader",
    "QueryResult",
    "Statement",
    "StatementError",
    "ViewEngine",
    "ViewService",
    "create_app",
    "encode_row",
    "line_item_batch",
    "parse_statements",
]
