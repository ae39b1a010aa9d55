"""What the HTTP API and the CLI call: statements, pull and push queries, definitions.

View definitions travel as `view.defined` events on the compacted `views`
topic; every replica applies them as it reads them, its own included, so
all replicas (and every restart) end with the same views.
"""

from __future__ import annotations

import contextlib
import itertools
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from onceflow.billing.views._impl.engine import BUILTIN_VIEWS, QueryResult, ViewEngine
from onceflow.billing.views._impl.statements import (
    Statement,
    StatementError,
    StatementKind,
    parse_statements,
)
from onceflow.schemas import ViewDefined

__all__ = ["PushQuery", "QueryHeader", "ViewService"]

Publish = Callable[[ViewDefined], None]
Row = tuple[Any, ...]


@dataclass(frozen=True)
class QueryHeader:
    query_id: str
    columns: list[str]
    types: list[str]

    def as_json(self) -> dict[str, Any]:
        return {"queryId": self.query_id, "columnNames": self.columns,
                "columnTypes": self.types}


@dataclass
class PushQuery:
    query_id: str
    sql: str
    text: str
    tenant: str | None
    stop: threading.Event = field(default_factory=threading.Event)
    started_at: float = field(default_factory=time.time)
    rows_sent: int = 0


class ViewService:
    def __init__(self, engine: ViewEngine, publish: Publish | None = None,
                 poll_s: float = 1.0) -> None:
        self.engine = engine
        self.publish = publish
        self.poll_s = poll_s
        self.push_queries: dict[str, PushQuery] = {}
        self._lock = threading.Lock()
        self._ids = itertools.count(1)

    # -- definitions from the views topic --------------------------------------------------

    def apply(self, event: ViewDefined) -> None:
        if event.dropped:
            if event.view_name not in BUILTIN_VIEWS:
                self.engine.drop(event.view_name)
            return
        kind: StatementKind = "create_table" if event.kind == "table" else "create_stream"
        # A view that depended on one dropped since cannot be made; SHOW lists what exists.
        with contextlib.suppress(StatementError):
            self.engine.define(Statement(kind, event.statement, name=event.view_name,
                                         query_sql=event.query_sql, windowed=event.windowed))

    # -- /ksql -------------------------------------------------------------------------------

    def execute(self, text: str, *, tenant: str | None = None) -> list[dict[str, Any]]:
        """Run every statement of a request; the first bad one raises `StatementError`."""
        return [self._execute(stmt, tenant) for stmt in parse_statements(text)]

    def _execute(self, stmt: Statement, tenant: str | None) -> dict[str, Any]:
        base = {"statementText": stmt.text, "warnings": []}
        if stmt.kind in ("create_table", "create_stream", "drop") and tenant is not None:
            raise StatementError("a tenant-scoped session can query but not create or drop "
                                 "views", stmt.text)
        if stmt.kind in ("create_table", "create_stream"):
            assert stmt.name
            self.engine.check(stmt)
            event = ViewDefined(
                event_id=uuid.uuid4().hex, occurred_at=int(time.time() * 1000),
                view_name=stmt.name, kind="table" if stmt.kind == "create_table" else "stream",
                statement=stmt.text, query_sql=stmt.query_sql or "", windowed=stmt.windowed)
            self._publish(event)
            self.engine.define(stmt)
            prefix = "CTAS" if stmt.kind == "create_table" else "CSAS"
            return {**base, "@type": "currentStatus", "commandId": f"{prefix}_{stmt.name}",
                    "commandStatus": {"status": "SUCCESS",
                                      "message": f"Created query with ID "
                                                 f"{prefix}_{stmt.name.upper()}"}}
        if stmt.kind == "drop":
            assert stmt.name
            if stmt.name not in self.engine.views and "IF EXISTS" not in stmt.text.upper():
                raise StatementError(f"{stmt.name} does not exist", stmt.text)
            if stmt.name in BUILTIN_VIEWS or stmt.name == "ledger":
                raise StatementError(f"{stmt.name} is built in and cannot be dropped", stmt.text)
            self._publish(ViewDefined(event_id=uuid.uuid4().hex,
                                      occurred_at=int(time.time() * 1000),
                                      view_name=stmt.name, statement=stmt.text, dropped=True))
            self.engine.drop(stmt.name, stmt.text)
            return {**base, "@type": "currentStatus", "commandId": f"DROP_{stmt.name}",
                    "commandStatus": {"status": "SUCCESS",
                                      "message": f"Source {stmt.name.upper()} was dropped."}}
        if stmt.kind == "show_tables":
            return {**base, "@type": "tables", "tables": [
                {"name": v.name.upper(), "type": "TABLE", "isWindowed": v.windowed,
                 "builtIn": v.builtin, "topic": "ledger"}
                for v in self.engine.iter_views() if v.kind == "table"]}
        if stmt.kind == "show_streams":
            streams = [{"name": "LEDGER", "type": "STREAM", "isWindowed": False, "builtIn": True,
                        "topic": "ledger"}]
            streams += [{"name": v.name.upper(), "type": "STREAM", "isWindowed": False,
                         "builtIn": False, "topic": "ledger"}
                        for v in self.engine.iter_views() if v.kind == "stream"]
            return {**base, "@type": "streams", "streams": streams}
        if stmt.kind == "show_queries":
            persistent = [{"id": f"{'CTAS' if v.kind == 'table' else 'CSAS'}_{v.name.upper()}",
                           "queryString": v.statement, "sinks": [v.name.upper()],
                           "queryType": "PERSISTENT", "state": "RUNNING"}
                          for v in self.engine.iter_views()]
            with self._lock:
                push = [{"id": q.query_id, "queryString": q.text, "sinks": [],
                         "queryType": "PUSH", "state": "RUNNING"}
                        for q in self.push_queries.values()]
            return {**base, "@type": "queries", "queries": persistent + push}
        if stmt.kind == "describe":
            assert stmt.name
            fields = self.engine.describe(stmt.name, stmt.text)
            view = self.engine.views.get(stmt.name)
            return {**base, "@type": "sourceDescription", "sourceDescription": {
                "name": stmt.name.upper(),
                "type": "STREAM" if view is None or view.kind == "stream" else "TABLE",
                "windowType": "TUMBLING" if view is not None and view.windowed else None,
                "statement": view.statement if view else "the ledger's line items",
                "fields": [{"name": n, "schema": {"type": t}} for n, t in fields],
                "topic": "ledger"}}
        # a SELECT sent to /ksql runs as a pull query, as a convenience
        result = self.engine.query(stmt.query_sql or "", tenant=tenant, text=stmt.text)
        return {**base, "@type": "rows", "header": {"columnNames": result.columns,
                                                    "columnTypes": result.types},
                "rows": [list(r) for r in result.rows]}

    def _publish(self, event: ViewDefined) -> None:
        if self.publish is not None:
            self.publish(event)

    # -- /query-stream -------------------------------------------------------------------------

    def open_query(self, text: str, *, tenant: str | None = None,
                   properties: dict[str, Any] | None = None
                   ) -> tuple[QueryHeader, Iterator[Row | None], PushQuery | None]:
        statements = parse_statements(text)
        if len(statements) != 1 or statements[0].kind != "select":
            raise StatementError("/query-stream runs one SELECT; send other statements to /ksql",
                                 text)
        stmt = statements[0]
        sql = stmt.query_sql or ""
        first = self.engine.query(sql, tenant=tenant, text=text)
        if not stmt.push:
            header = QueryHeader(f"pull_{next(self._ids)}", first.columns, first.types)
            return header, iter(first.rows), None
        query = PushQuery(f"push_{uuid.uuid4().hex[:12]}", sql, text, tenant)
        with self._lock:
            self.push_queries[query.query_id] = query
        earliest = str((properties or {}).get("auto.offset.reset", "latest")) == "earliest"
        header = QueryHeader(query.query_id, first.columns, first.types)
        return header, self._push_rows(query, first, emit_first=earliest), query

    def _push_rows(self, query: PushQuery, first: QueryResult, *, emit_first: bool
                   ) -> Iterator[Row | None]:
        """New or changed rows as the ledger grows, until the query is closed.

        Yields None when a wait ended with nothing new, so that whoever streams
        the rows gets control back regularly (to notice a client that left).
        """
        sent: Counter[tuple[Any, ...]] = Counter()
        try:
            if emit_first:
                for row in first.rows:
                    sent[row] += 1
                    query.rows_sent += 1
                    yield row
            else:
                sent.update(first.rows)
            seen = self.engine.version
            while not query.stop.is_set():
                seen_now = self.engine.wait_for_change(seen, self.poll_s)
                if query.stop.is_set():
                    break
                if seen_now == seen:
                    yield None
                    continue
                seen = seen_now
                rows = self.engine.query(query.sql, tenant=query.tenant, text=query.text).rows
                fresh = Counter(rows) - sent
                for row in rows:
                    if fresh[row] > 0:
                        fresh[row] -= 1
                        sent[row] += 1
                        query.rows_sent += 1
                        yield row
        finally:
            self.close_query(query.query_id)

    def close_query(self, query_id: str, *, tenant: str | None = None) -> bool:
        """Stop a push query; with `tenant`, only one of that tenant's (None: any)."""
        with self._lock:
            query = self.push_queries.get(query_id)
            if query is None or (tenant is not None and query.tenant != tenant):
                return False
            del self.push_queries[query_id]
        query.stop.set()
        with self.engine.changed:
            self.engine.changed.notify_all()
        return True
