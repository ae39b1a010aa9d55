"""The views engine: the ledger in DuckDB, the views over it, and queries.

Line items land in `raw.line_items` together with the offsets they were
read at, in one transaction (`raw.offsets`), which is what makes the sink
exactly-once. A line item whose id the engine saw among the last
`dedupe_window` ones is not inserted again: the ledger never writes one
twice (its shell compares re-decided facts with those in the log), and the
window guards against a producer that did, where a re-send lands near the
original. It replaces a primary key, whose index cost more than the whole
rest of an insert. `ledger` is a view over that table;
every ksql-style view is a DuckDB view over `ledger` (and over each other),
so it is never stale: a query sees every line item committed before it.

Queries run on their own cursor with external access off (no files, no
ATTACH, no COPY), after `select_sql` has let through only one SELECT. A
tenant-scoped cursor gets a temporary `ledger` view of that tenant's rows,
which every view's reference to `ledger` resolves to.
"""

from __future__ import annotations

import re
import threading
import types
import typing
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa

from onceflow.billing.views._impl.statements import Statement, StatementError, parse_statements
from onceflow.schemas import LedgerLineItem

__all__ = ["BUILTIN_VIEWS", "LEDGER_COLUMNS", "QueryResult", "ViewEngine", "ViewInfo"]

_ENVELOPE_SKIP = {"schema_version", "event_type"}


def _column_type(annotation: Any) -> str:
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType) and len(args) == 1:
        annotation = args[0]
    while typing.get_origin(annotation) is typing.Annotated:
        annotation = typing.get_args(annotation)[0]
    if annotation is Decimal:
        return "DECIMAL(38, 6)"
    if annotation is bool:
        return "BOOLEAN"
    if annotation is int:
        return "BIGINT"
    return "VARCHAR"


#: column name -> DuckDB type, in the order of the Avro record
LEDGER_COLUMNS: dict[str, str] = {
    name: _column_type(field.annotation)
    for name, field in LedgerLineItem.model_fields.items() if name not in _ENVELOPE_SKIP
}

#: name -> statement: the views every replica has from the start
BUILTIN_VIEWS: dict[str, str] = {
    "wallet_balance": (
        "CREATE TABLE wallet_balance AS SELECT l.tenant_id, "
        "sum(total_usd) FILTER (WHERE billed) AS charged_usd, "
        "coalesce(any_value(c.credit_usd), 0) AS credit_usd, "
        "coalesce(any_value(c.credit_usd), 0) - coalesce(sum(total_usd) FILTER (WHERE billed), 0)"
        " AS balance_usd, any_value(c.credit_usd) IS NOT NULL AS prepaid, "
        "count(*) FILTER (WHERE billed) AS line_items "
        "FROM ledger l LEFT JOIN raw.credits c ON c.tenant_id = l.tenant_id "
        "GROUP BY l.tenant_id EMIT CHANGES"),
    "cost_per_session": (
        "CREATE TABLE cost_per_session AS SELECT tenant_id, execution_session_id, "
        "sum(total_usd) AS cost_usd, count(*) AS line_items FROM ledger WHERE billed "
        "GROUP BY tenant_id, execution_session_id EMIT CHANGES"),
    "cost_per_model": (
        "CREATE TABLE cost_per_model AS SELECT model, sum(llm_tokens) AS tokens, "
        "sum(total_usd) AS cost_usd, count(*) AS invocations FROM ledger "
        "WHERE billed AND line_item_type = 'llm_tokens' GROUP BY model EMIT CHANGES"),
    "cost_per_node": (
        "CREATE TABLE cost_per_node AS SELECT node_id, sum(total_usd) AS cost_usd, "
        "count(*) AS line_items FROM ledger WHERE billed GROUP BY node_id EMIT CHANGES"),
    "hourly_spend_per_tenant": (
        "CREATE TABLE hourly_spend_per_tenant AS SELECT tenant_id, sum(total_usd) AS spend_usd, "
        "count(*) AS line_items FROM ledger WINDOW TUMBLING (SIZE 1 HOUR) WHERE billed "
        "GROUP BY tenant_id EMIT CHANGES"),
    "leakage_per_tenant": (
        "CREATE TABLE leakage_per_tenant AS SELECT tenant_id, sum(total_usd) AS leakage_usd, "
        "count(*) AS line_items FROM ledger WHERE NOT billed GROUP BY tenant_id EMIT CHANGES"),
}

_LEDGER_SELECT = ("SELECT * EXCLUDE (_partition, _offset), make_timestamp(occurred_at * 1000) "
                  "AS ts FROM raw.line_items")

# Names a tenant-scoped query may not use: they reach rows past the scope.
_UNSCOPED = re.compile(r"\b(raw|main|memory|temp|system|query_table|query|duckdb_\w+)\b\s*[.(]",
                       re.IGNORECASE)


@dataclass(frozen=True)
class ViewInfo:
    name: str
    kind: str  # "table" | "stream"
    statement: str
    query_sql: str
    windowed: bool
    builtin: bool


@dataclass(frozen=True)
class QueryResult:
    columns: list[str]
    types: list[str]
    rows: list[tuple[Any, ...]]


#: rows from which an insert runs with `ingest_threads` (switching costs about a ms)
_LARGE_INSERT = 10_000


class RecentIds:
    """The ids admitted lately (at least the last `capacity`): a bounded dedupe set.

    Kept as one set per admitted batch so that the common case (a batch of
    new ids) is a few set operations in C rather than a Python step per id.
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = max(1, capacity)
        self._all: set[str] = set()
        self._batches: deque[set[str]] = deque()
        self._size = 0

    def admit(self, ids: list[str]) -> tuple[list[bool] | None, set[str]]:
        """Remember the new ids; returns (a keep mask, or None when all are new; the new ids)."""
        batch = set(ids)
        if len(batch) == len(ids) and self._all.isdisjoint(batch):
            self._add(batch)
            return None, batch
        keep: list[bool] = []
        new: set[str] = set()
        for i in ids:
            fresh = i not in self._all and i not in new
            keep.append(fresh)
            if fresh:
                new.add(i)
        self._add(new)
        return keep, new

    def _add(self, batch: set[str]) -> None:
        if not batch:
            return
        self._all |= batch
        self._batches.append(batch)
        self._size += len(batch)
        while self._size - len(self._batches[0]) >= self.capacity:
            old = self._batches.popleft()
            self._all -= old
            self._size -= len(old)

    def forget(self, batches: list[set[str]]) -> None:
        """Undo `admit` for batches whose insert was rolled back."""
        for batch in batches:
            for j in range(len(self._batches) - 1, -1, -1):
                if self._batches[j] is batch:
                    del self._batches[j]
                    self._all -= batch
                    self._size -= len(batch)
                    break


class ViewEngine:
    def __init__(self, path: Path | str | None = None,
                 credits: dict[str, Decimal] | None = None, *,
                 dedupe_window: int = 200_000, ingest_threads: int | None = 1) -> None:
        """`ingest_threads`: DuckDB threads for a large insert (None: as for queries).

        On the 2-core machines we run on, a 50,000-row insert is faster on one
        thread (about 3.8 against 5.6 us a row), while an aggregate over a
        million rows wants both (5.8 against 7.5 ms); a large insert therefore
        runs with fewer threads, and queries meanwhile with as few.
        """
        self.path = str(path) if path is not None else ":memory:"
        self._db = duckdb.connect(self.path)
        self._query_threads = int(self._db.execute(
            "SELECT current_setting('threads')").fetchone()[0])  # type: ignore[index]
        self._ingest_threads = ingest_threads
        self._lock = threading.Lock()  # DDL and ingest; queries use their own cursors
        self.changed = threading.Condition()
        self.version = 0  # grows with every ingest and view change
        self._create_schema(credits or {})
        self._recent = RecentIds(dedupe_window)
        self._recent.admit(self._last_ids(dedupe_window))
        self._db.execute("SET enable_external_access = false")
        self.views: dict[str, ViewInfo] = {}
        for text in BUILTIN_VIEWS.values():
            (stmt,) = parse_statements(text)
            self._create(stmt, builtin=True)

    # -- schema -------------------------------------------------------------------------

    def _create_schema(self, credits: dict[str, Decimal]) -> None:
        cols = ", ".join(f"{name} {kind}" for name, kind in LEDGER_COLUMNS.items())
        db = self._db
        db.execute("CREATE SCHEMA IF NOT EXISTS raw")
        db.execute(f"CREATE TABLE IF NOT EXISTS raw.line_items ({cols}, _partition INTEGER, "
                   "_offset BIGINT)")
        db.execute("CREATE TABLE IF NOT EXISTS raw.offsets (topic VARCHAR, part INTEGER, "
                   "next_offset BIGINT, PRIMARY KEY (topic, part))")
        db.execute("CREATE OR REPLACE TABLE raw.credits (tenant_id VARCHAR PRIMARY KEY, "
                   "credit_usd DECIMAL(38, 6))")
        for tenant, amount in sorted(credits.items()):
            db.execute("INSERT INTO raw.credits VALUES (?, ?)", [tenant, amount])
        db.execute(f"CREATE OR REPLACE VIEW main.ledger AS {_LEDGER_SELECT}")

    # -- the sink ------------------------------------------------------------------------

    def offsets(self, topic: str) -> dict[int, int]:
        with self._lock:
            rows = self._db.execute("SELECT part, next_offset FROM raw.offsets WHERE topic = ?",
                                    [topic]).fetchall()
        return {int(p): int(o) for p, o in rows}

    def _last_ids(self, limit: int) -> list[str]:
        """The ids of the last `limit` line items, oldest first (to prime the window)."""
        rows = self._db.execute(
            "SELECT line_item_id FROM raw.line_items ORDER BY _offset DESC, _partition DESC "
            "LIMIT ?", [limit]).fetchall()
        return [r[0] for r in reversed(rows)]

    def ingest(self, batch: pa.Table | Sequence[pa.Table], topic: str,
               offsets: dict[int, int]) -> int:
        """Insert line items and the offsets after them in one transaction; returns rows new.

        `batch`: one Arrow table, or several (fast- and slow-decoded parts of
        one read) that commit together. A line item in the window of recent
        ids (the same one produced twice) is not inserted again.
        """
        tables = [batch] if isinstance(batch, pa.Table) else list(batch)
        casts = ", ".join(
            f"CAST({n} AS {t})" if t.startswith("DECIMAL") else n
            for n, t in LEDGER_COLUMNS.items())
        with self._lock:
            db = self._db
            admitted: list[set[str]] = []
            parts: list[pa.Table] = []
            for table in tables:
                keep, new = self._recent.admit(table.column("line_item_id").to_pylist())
                admitted.append(new)
                if keep is not None:
                    table = table.filter(pa.array(keep, pa.bool_()))
                if table.num_rows:
                    parts.append(table)
            # Registered outside the transaction: an aborted one refuses to unregister.
            names = [f"incoming_{i}" for i in range(len(parts))]
            for name, table in zip(names, parts, strict=True):
                db.register(name, table)
            inserted = sum(t.num_rows for t in parts)
            narrow = (self._ingest_threads is not None and inserted >= _LARGE_INSERT
                      and self._ingest_threads != self._query_threads)
            if narrow:
                db.execute(f"SET threads = {self._ingest_threads}")
            try:
                db.execute("BEGIN TRANSACTION")
                for name in names:
                    db.execute(f"INSERT INTO raw.line_items SELECT {casts}, "
                               f"_partition, _offset FROM {name}")
                for part, next_offset in sorted(offsets.items()):
                    db.execute("INSERT OR REPLACE INTO raw.offsets VALUES (?, ?, ?)",
                               [topic, part, next_offset])
                db.execute("COMMIT")
            except Exception:
                db.execute("ROLLBACK")
                self._recent.forget(admitted)
                raise
            finally:
                for name in names:
                    db.unregister(name)
                if narrow:
                    db.execute(f"SET threads = {self._query_threads}")
        self._bump()
        return inserted

    def _bump(self) -> None:
        with self.changed:
            self.version += 1
            self.changed.notify_all()

    def wait_for_change(self, seen: int, timeout: float) -> int:
        with self.changed:
            if self.version == seen:
                self.changed.wait(timeout)
            return self.version

    # -- views ------------------------------------------------------------------------------

    def _create(self, stmt: Statement, *, builtin: bool = False) -> ViewInfo:
        assert stmt.name and stmt.query_sql
        if stmt.name in ("ledger",) or (stmt.name in BUILTIN_VIEWS and not builtin):
            raise StatementError(f"{stmt.name} is built in and cannot be replaced", stmt.text)
        kind = "table" if stmt.kind == "create_table" else "stream"
        with self._lock:
            try:
                self._db.execute(f"CREATE OR REPLACE VIEW main.{stmt.name} AS {stmt.query_sql}")
            except duckdb.Error as exc:
                raise StatementError(f"cannot create {stmt.name}: "
                                     f"{str(exc).splitlines()[0]}", stmt.text) from None
        info = ViewInfo(stmt.name, kind, stmt.text, stmt.query_sql, stmt.windowed, builtin)
        self.views[stmt.name] = info
        self._bump()
        return info

    def check(self, stmt: Statement) -> None:
        """Would `stmt` create a working view? Raises `StatementError` if not; changes nothing."""
        assert stmt.name and stmt.query_sql
        if stmt.name == "ledger" or stmt.name in BUILTIN_VIEWS:
            raise StatementError(f"{stmt.name} is built in and cannot be replaced", stmt.text)
        self._describe_sql(stmt.query_sql, stmt.text)

    def define(self, stmt: Statement) -> ViewInfo:
        return self._create(stmt)

    def drop(self, name: str, text: str = "") -> bool:
        if name == "ledger" or name in BUILTIN_VIEWS:
            raise StatementError(f"{name} is built in and cannot be dropped", text)
        if name not in self.views:
            return False
        with self._lock:
            self._db.execute(f"DROP VIEW IF EXISTS main.{name}")
        self.views.pop(name, None)
        self._bump()
        return True

    def forget_except(self, keep: Iterable[str]) -> None:
        """Drop user views that are not in `keep` (a restart that re-read the definitions)."""
        wanted = set(keep)
        with self._lock:
            existing = [r[0] for r in self._db.execute(
                "SELECT view_name FROM duckdb_views() WHERE schema_name = 'main' "
                "AND NOT internal").fetchall()]
        for name in existing:
            if name != "ledger" and name not in BUILTIN_VIEWS and name not in wanted:
                with self._lock:
                    self._db.execute(f"DROP VIEW IF EXISTS main.{name}")
                self.views.pop(name, None)

    # -- queries ----------------------------------------------------------------------------

    def _cursor(self, tenant: str | None, text: str, sql: str) -> duckdb.DuckDBPyConnection:
        cur = self._db.cursor()
        if tenant is not None:
            if _UNSCOPED.search(sql):
                cur.close()
                raise StatementError("a tenant-scoped query may only read views and the "
                                     "ledger by their plain names", text)
            quoted = tenant.replace("'", "''")  # DDL takes no parameters
            # Over raw.line_items: in a temporary view, `main` is the temp catalog's schema.
            cur.execute(f"CREATE OR REPLACE TEMP VIEW ledger AS {_LEDGER_SELECT} "
                        f"WHERE tenant_id = '{quoted}'")
        return cur

    def query(self, sql: str, *, tenant: str | None = None, text: str = "") -> QueryResult:
        cur = self._cursor(tenant, text or sql, sql)
        try:
            rel = cur.execute(sql)
            desc = rel.description or []
            rows = rel.fetchall()
        except duckdb.Error as exc:
            raise StatementError(str(exc).splitlines()[0], text or sql) from None
        finally:
            cur.close()
        return QueryResult([d[0] for d in desc], [str(d[1]).upper() for d in desc], rows)

    def _describe_sql(self, sql: str, text: str) -> list[tuple[str, str]]:
        cur = self._db.cursor()
        try:
            rel = cur.execute(f"SELECT * FROM ({sql}) LIMIT 0")
            return [(d[0], str(d[1]).upper()) for d in rel.description or []]
        except duckdb.Error as exc:
            raise StatementError(str(exc).splitlines()[0], text) from None
        finally:
            cur.close()

    def describe(self, name: str, text: str = "") -> list[tuple[str, str]]:
        if name != "ledger" and name not in self.views:
            raise StatementError(f"{name} does not exist: SHOW TABLES and SHOW STREAMS list "
                                 "what does", text)
        return self._describe_sql(f"SELECT * FROM {name}", text)

    def count_and_sum(self) -> tuple[int, Decimal]:
        """Line items held and their total: what the chaos test compares with the topic."""
        r = self.query("SELECT count(*), coalesce(sum(total_usd), 0) FROM ledger").rows[0]
        return int(r[0]), Decimal(r[1])

    def iter_views(self) -> Iterator[ViewInfo]:
        yield from sorted(self.views.values(), key=lambda v: v.name)

    def close(self) -> None:
        self._db.close()
