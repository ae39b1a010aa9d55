"""ksql-style statements, parsed and translated to DuckDB's SQL.

What is accepted (ksqlDB's shapes, over the ledger):

- ``CREATE TABLE name AS SELECT ... FROM src [WINDOW TUMBLING (SIZE n UNIT)]
  [WHERE ...] GROUP BY ... [HAVING ...] [EMIT CHANGES];``
- ``CREATE STREAM name AS SELECT ... FROM src [WHERE ...] [EMIT CHANGES];``
- ``SELECT ... FROM name [WHERE ...] [EMIT CHANGES];`` (pull, or push with
  EMIT CHANGES)
- ``SHOW TABLES``, ``SHOW STREAMS``, ``SHOW QUERIES``, ``DESCRIBE name``,
  ``DROP TABLE name``, ``DROP STREAM name``

A windowed table gains ksqlDB's ``WINDOWSTART`` and ``WINDOWEND`` columns
(epoch milliseconds). Every query part must be exactly one read-only SELECT
by DuckDB's own parser; anything else is refused before it runs.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

import duckdb

__all__ = ["Statement", "StatementError", "StatementKind", "parse_statements", "select_sql"]

StatementKind = Literal["create_table", "create_stream", "select", "show_tables",
                        "show_streams", "show_queries", "describe", "drop"]

_NAME = r"[A-Za-z_][A-Za-z0-9_]*"
_UNITS = {"MILLISECOND": "millisecond", "SECOND": "second", "MINUTE": "minute",
          "HOUR": "hour", "DAY": "day"}
_EMIT = re.compile(r"\s+EMIT\s+CHANGES\s*$", re.IGNORECASE)
_WINDOW = re.compile(r"\s+WINDOW\s+TUMBLING\s*\(\s*SIZE\s+(\d+)\s+([A-Za-z]+)\s*\)",
                     re.IGNORECASE)
_CREATE = re.compile(rf"^CREATE\s+(?:OR\s+REPLACE\s+)?(TABLE|STREAM)\s+({_NAME})\s+AS\s+(SELECT\b.*)$",
                     re.IGNORECASE | re.DOTALL)


class StatementError(ValueError):
    """A statement that cannot run; the message says what is wrong and how to fix it."""

    error_code = 40001

    def __init__(self, message: str, statement: str = "") -> None:
        super().__init__(message)
        self.statement = statement


@dataclass(frozen=True)
class Statement:
    kind: StatementKind
    text: str
    name: str | None = None
    query_sql: str | None = None
    push: bool = False
    windowed: bool = False


def split_statements(text: str) -> list[str]:
    """Split on semicolons outside quotes and comments."""
    parts: list[str] = []
    current: list[str] = []
    quote: str | None = None
    i = 0
    while i < len(text):
        c = text[i]
        if quote:
            current.append(c)
            if c == quote:
                quote = None
        elif c in ("'", '"'):
            quote = c
            current.append(c)
        elif c == "-" and text.startswith("--", i):
            end = text.find("\n", i)
            i = len(text) if end < 0 else end
            continue
        elif c == ";":
            parts.append("".join(current))
            current = []
        else:
            current.append(c)
        i += 1
    if quote:
        raise StatementError(f"unterminated {quote} quote", text)
    parts.append("".join(current))
    return [p.strip() for p in parts if p.strip()]


def _window(sql: str) -> tuple[str, bool]:
    match = _WINDOW.search(sql)
    if match is None:
        return sql, False
    size, unit = int(match.group(1)), match.group(2).upper().rstrip("S")
    if unit not in _UNITS or size <= 0:
        raise StatementError(f"WINDOW TUMBLING (SIZE {match.group(1)} {match.group(2)}): use a "
                             "positive size in MILLISECONDS, SECONDS, MINUTES, HOURS or DAYS")
    interval = f"INTERVAL '{size} {_UNITS[unit]}'"
    bucket = f"time_bucket({interval}, ts)"
    sql = sql[:match.start()] + sql[match.end():]
    if not re.search(r"\bGROUP\s+BY\b", sql, re.IGNORECASE):
        raise StatementError("a windowed table needs GROUP BY")
    sql = re.sub(r"^\s*SELECT\s+", f"SELECT epoch_ms({bucket}) AS WINDOWSTART, "
                 f"epoch_ms({bucket} + {interval}) AS WINDOWEND, ", sql, count=1,
                 flags=re.IGNORECASE)
    sql = re.sub(r"\bGROUP\s+BY\s+", f"GROUP BY {bucket}, ", sql, count=1, flags=re.IGNORECASE)
    return sql, True


def select_sql(text: str) -> tuple[str, bool, bool]:
    """A ksql SELECT as DuckDB SQL: (sql, push, windowed). Refuses anything but one SELECT."""
    sql = text.strip().rstrip(";").strip()
    push = bool(_EMIT.search(sql))
    sql = _EMIT.sub("", sql)
    sql, windowed = _window(sql)
    try:
        parsed = duckdb.extract_statements(sql)
    except duckdb.Error as exc:
        raise StatementError(f"cannot parse the query: {str(exc).splitlines()[0]}", text) from None
    if len(parsed) != 1 or parsed[0].type != duckdb.StatementType.SELECT:
        kinds = ", ".join(str(p.type).rsplit(".", 1)[-1] for p in parsed) or "nothing"
        raise StatementError(f"only a read-only SELECT can be run here, not {kinds}: the "
                             "ledger cannot be changed through queries", text)
    return sql, push, windowed


def parse_statements(text: str) -> list[Statement]:
    """Every statement of a request, parsed; the first bad one raises `StatementError`."""
    statements = split_statements(text)
    if not statements:
        raise StatementError("no statement given: send e.g. SHOW TABLES; or SELECT ...;", text)
    return [_parse_one(s) for s in statements]


def _parse_one(text: str) -> Statement:
    words = text.split()
    head = " ".join(w.upper() for w in words[:2])
    if head in ("SHOW TABLES", "LIST TABLES") and len(words) == 2:
        return Statement("show_tables", text)
    if head in ("SHOW STREAMS", "LIST STREAMS") and len(words) == 2:
        return Statement("show_streams", text)
    if head in ("SHOW QUERIES", "LIST QUERIES") and len(words) == 2:
        return Statement("show_queries", text)
    if words[0].upper() == "DESCRIBE":
        if len(words) != 2 or not re.fullmatch(_NAME, words[1]):
            raise StatementError("DESCRIBE takes one table or stream name", text)
        return Statement("describe", text, name=words[1].lower())
    if head in ("DROP TABLE", "DROP STREAM"):
        rest = words[2:]
        if rest[:2] and [w.upper() for w in rest[:2]] == ["IF", "EXISTS"]:
            rest = rest[2:]
        if len(rest) != 1 or not re.fullmatch(_NAME, rest[0]):
            raise StatementError(f"{head} takes one name", text)
        return Statement("drop", text, name=rest[0].lower())
    create = _CREATE.match(text.strip())
    if create is not None:
        kind, name, select = create.group(1).upper(), create.group(2).lower(), create.group(3)
        sql, _push, windowed = select_sql(select)
        grouped = bool(re.search(r"\bGROUP\s+BY\b", sql, re.IGNORECASE))
        if kind == "TABLE" and not grouped:
            raise StatementError("CREATE TABLE ... AS SELECT needs GROUP BY (a table is an "
                                 "aggregate); use CREATE STREAM for rows as they come", text)
        if kind == "STREAM" and (grouped or windowed):
            raise StatementError("a stream has no GROUP BY or WINDOW: use CREATE TABLE", text)
        return Statement("create_table" if kind == "TABLE" else "create_stream", text,
                         name=name, query_sql=sql, windowed=windowed)
    if words[0].upper() in ("SELECT", "WITH"):
        sql, push, windowed = select_sql(text)
        return Statement("select", text, query_sql=sql, push=push, windowed=windowed)
    raise StatementError(
        f"statement not supported: {' '.join(words[:3])}...; use CREATE TABLE|STREAM name AS "
        "SELECT, SELECT [EMIT CHANGES], SHOW TABLES|STREAMS|QUERIES, DESCRIBE name or DROP "
        "TABLE|STREAM name", text)
