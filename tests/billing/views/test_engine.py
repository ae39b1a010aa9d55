"""Statements and queries on the engine alone: no broker."""

from __future__ import annotations

from decimal import Decimal

import pytest

from onceflow.billing.views import (
    BUILTIN_VIEWS,
    StatementError,
    ViewEngine,
    ViewService,
    parse_statements,
)
from onceflow.billing.views._impl.engine import RecentIds
from tests.billing.views.fixtures import HOUR, exact_total, ingest, ledger_items


@pytest.fixture
def engine() -> ViewEngine:
    e = ViewEngine(credits={"t0": Decimal("100")})
    yield e
    e.close()


def test_ingest_is_idempotent_and_stores_offsets_with_the_rows(engine: ViewEngine) -> None:
    items = ledger_items(40)
    assert ingest(engine, items) == len(items)
    assert ingest(engine, items) == 0  # the same line items again: nothing new
    assert engine.offsets("ledger") == {0: len(items)}
    assert engine.count_and_sum() == (len(items), sum((i.total_usd for i in items),
                                                      Decimal("0")))


def test_a_line_item_is_recognised_after_a_restart_on_the_same_database(tmp_path) -> None:
    items = ledger_items(30)
    first = ViewEngine(tmp_path / "views.duckdb")
    assert ingest(first, items) == len(items)
    first.close()
    again = ViewEngine(tmp_path / "views.duckdb")  # the window is primed from its own rows
    assert ingest(again, items[-5:], first_offset=len(items)) == 0
    assert again.count_and_sum()[0] == len(items)
    again.close()


def test_recent_ids_forget_only_the_oldest_beyond_the_window() -> None:
    recent = RecentIds(3)
    assert recent.admit(["a", "b", "c"]) == (None, {"a", "b", "c"})
    assert recent.admit(["c", "d", "d"]) == ([False, True, False], {"d"})
    recent.admit(["e", "f"])  # 3 ids remain without "a", "b", "c": they leave together
    assert recent.admit(["a", "d"]) == ([True, False], {"a"})


def test_recent_ids_rolled_back_are_admitted_again() -> None:
    recent = RecentIds(100)
    _, new = recent.admit(["x", "y"])
    recent.forget([new])
    assert recent.admit(["x", "y"]) == (None, {"x", "y"})


def test_builtin_views_answer_exactly(engine: ViewEngine) -> None:
    items = ledger_items(60)
    ingest(engine, items)
    wallet = {r[0]: r for r in engine.query("SELECT * FROM wallet_balance").rows}
    assert wallet["t0"][1] == exact_total(items, "t0")
    assert wallet["t0"][3] == Decimal("100") - exact_total(items, "t0")  # balance
    assert wallet["t0"][4] is True and wallet["t1"][4] is False  # prepaid
    per_model = dict((r[0], r[2]) for r in engine.query("SELECT * FROM cost_per_model").rows)
    assert per_model == {m: sum((i.total_usd for i in items if i.model == m), Decimal("0"))
                         for m in ("m0", "m1")}
    hourly = engine.query("SELECT WINDOWSTART, WINDOWEND, spend_usd FROM hourly_spend_per_tenant "
                          "WHERE tenant_id = 't1' ORDER BY WINDOWSTART").rows
    assert all(end - start == HOUR for start, end, _ in hourly)
    assert sum((r[2] for r in hourly), Decimal("0")) == exact_total(items, "t1")
    assert set(BUILTIN_VIEWS) <= {v.name for v in engine.iter_views()}


def test_a_windowed_table_groups_by_tumbling_window(engine: ViewEngine) -> None:
    ingest(engine, ledger_items(50))
    service = ViewService(engine)
    service.execute("CREATE TABLE per_2h AS SELECT tenant_id, count(*) AS n FROM ledger "
                    "WINDOW TUMBLING (SIZE 2 HOURS) GROUP BY tenant_id EMIT CHANGES;")
    rows = engine.query("SELECT WINDOWSTART, WINDOWEND, n FROM per_2h").rows
    assert {end - start for start, end, _ in rows} == {2 * HOUR}
    assert sum(r[2] for r in rows) == 50 + 12  # 50 cpu items and 12 token items
    (described,) = service.execute("DESCRIBE per_2h;")
    names = [f["name"] for f in described["sourceDescription"]["fields"]]
    assert names[:2] == ["WINDOWSTART", "WINDOWEND"]
    assert described["sourceDescription"]["windowType"] == "TUMBLING"


@pytest.mark.parametrize("sql", [
    "INSERT INTO raw.line_items SELECT * FROM raw.line_items",
    "DELETE FROM raw.line_items",
    "UPDATE raw.line_items SET total_usd = 0",
    "ATTACH '/tmp/other.db' AS other",
    "COPY raw.line_items TO '/tmp/out.csv'",
    "SELECT * FROM ledger; DELETE FROM raw.line_items",
    "CREATE TABLE x AS SELECT * FROM ledger",  # not a view: no GROUP BY
    "DROP TABLE ledger",
    "PRAGMA version",
])
def test_statements_that_write_are_refused(engine: ViewEngine, sql: str) -> None:
    ingest(engine, ledger_items(5))
    with pytest.raises(StatementError):
        ViewService(engine).execute(sql)
    assert engine.count_and_sum()[0] == 6


@pytest.mark.parametrize("sql", [
    "SELECT * FROM read_csv('/etc/passwd')",
    "SELECT * FROM read_text('/etc/hostname')",
    "SELECT * FROM glob('/etc/*')",
])
def test_file_reading_table_functions_are_refused(engine: ViewEngine, sql: str) -> None:
    with pytest.raises(StatementError, match=r"(?i)disabled|permission"):
        ViewService(engine).execute(sql)


def test_a_tenant_scope_sees_only_its_rows_through_every_view(engine: ViewEngine) -> None:
    items = ledger_items(30)
    ingest(engine, items)
    service = ViewService(engine)
    service.execute("CREATE TABLE by_tenant AS SELECT tenant_id, sum(total_usd) AS s FROM "
                    "ledger GROUP BY tenant_id;")
    (rows,) = service.execute("SELECT * FROM by_tenant;", tenant="t2")
    assert rows["rows"] == [["t2", exact_total(items, "t2")]]
    (count,) = service.execute("SELECT count(DISTINCT tenant_id) FROM ledger;", tenant="t2")
    assert count["rows"] == [[1]]
    for escape in ("SELECT * FROM raw.line_items", "SELECT * FROM main.ledger",
                   "SELECT * FROM query_table('raw.line_items')"):
        with pytest.raises(StatementError, match="tenant-scoped"):
            service.execute(escape, tenant="t2")
    with pytest.raises(StatementError, match="tenant-scoped"):
        service.execute("CREATE TABLE mine AS SELECT tenant_id, count(*) FROM ledger "
                        "GROUP BY tenant_id;", tenant="t2")


def test_bad_statements_name_the_problem(engine: ViewEngine) -> None:
    service = ViewService(engine)
    cases = {
        "SELEC * FROM ledger": "not supported",
        "SELECT * FROM nowhere": "nowhere",
        "DESCRIBE nowhere": "does not exist",
        "CREATE TABLE t AS SELECT tenant_id FROM ledger WINDOW TUMBLING (SIZE 1 FORTNIGHT) "
        "GROUP BY tenant_id": "FORTNIGHT",
        "DROP TABLE wallet_balance": "built in",
        "": "no statement",
    }
    for sql, words in cases.items():
        with pytest.raises(StatementError, match=words):
            service.execute(sql)


def test_show_and_drop(engine: ViewEngine) -> None:
    service = ViewService(engine)
    published = []
    service.publish = published.append
    service.execute("CREATE STREAM big AS SELECT * FROM ledger WHERE total_usd > 0.001;")
    (streams,) = service.execute("SHOW STREAMS;")
    assert [s["name"] for s in streams["streams"]] == ["LEDGER", "BIG"]
    (queries,) = service.execute("SHOW QUERIES;")
    assert "CSAS_BIG" in [q["id"] for q in queries["queries"]]
    service.execute("DROP STREAM big;")
    (streams,) = service.execute("SHOW STREAMS;")
    assert [s["name"] for s in streams["streams"]] == ["LEDGER"]
    assert [(e.view_name, e.dropped) for e in published] == [("big", False), ("big", True)]


def test_statement_splitting_respects_quotes() -> None:
    stmts = parse_statements("SELECT ';' AS x FROM ledger; SHOW TABLES;")
    assert [s.kind for s in stmts] == ["select", "show_tables"]
