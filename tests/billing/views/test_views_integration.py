"""The views processor on the broker: convergence, push queries over HTTP, SIGKILL."""

from __future__ import annotations

import json
import os
import signal
import threading
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import httpx
import pytest
from confluent_kafka import Message

from onceflow.billing.views import DELIMITED, ViewEngine, create_app
from onceflow.billing.views.worker import ViewsProcessor
from onceflow.infra.broker import free_port
from onceflow.infra.roles import start_roles, stop_roles
from onceflow.schemas import PLATFORM_TENANT, LedgerLineItem, SingleObjectCodec
from onceflow.settings import OnceflowSettings
from onceflow.streams.kafka import EventProducer, read_topic_to_end
from onceflow.streams.topics import TopicCatalog, create_topics
from tests.billing.views.fixtures import ingest, ledger_items
from tests.fixtures import events, running, wait_for

pytestmark = [pytest.mark.integration]

#: the platform's operator: reads across tenants (every other request names its own tenant)
OPERATOR = {"X-Onceflow-Tenant": PLATFORM_TENANT}
TOKEN = "views-test-token"

BY_SESSION = ("SELECT tenant_id, execution_session_id, sum(total_usd) AS usd, count(*) AS n "
              "FROM ledger GROUP BY tenant_id, execution_session_id")


def produce(settings: OnceflowSettings, items: list[LedgerLineItem]) -> None:
    producer = EventProducer(settings, SingleObjectCodec())
    topic = TopicCatalog(settings)["ledger"]
    for item in items:
        producer.send(topic, item)
    producer.flush()


@pytest.fixture
def views(settings: OnceflowSettings, tmp_path: Path) -> Iterator[ViewsProcessor]:
    create_topics(settings)
    processor = ViewsProcessor(settings, db_path=tmp_path / "views.duckdb")
    processor.start()
    yield processor
    processor.close()


def test_a_view_created_while_items_flow_equals_the_sql_over_the_whole_ledger(
        settings: OnceflowSettings, views: ViewsProcessor) -> None:
    items = ledger_items(900)
    half = len(items) // 2
    produce(settings, items[:half])
    wait_for(lambda: views.engine.count_and_sum()[0] >= 100, what="the sink under way")
    views.service.execute(f"CREATE TABLE by_session AS {BY_SESSION} EMIT CHANGES;")
    views.service.execute("CREATE TABLE hourly AS SELECT tenant_id, sum(total_usd) AS usd FROM "
                          "ledger WINDOW TUMBLING (SIZE 1 HOUR) GROUP BY tenant_id;")
    feeder = threading.Thread(target=produce, args=(settings, items[half:]))
    feeder.start()
    feeder.join(60)
    wait_for(lambda: views.engine.count_and_sum()[0] == len(items), what="every line item")

    reference = ViewEngine()  # the same SQL over the ledger read from offset 0
    written = [e for e in events(settings, TopicCatalog(settings)["ledger"].name)
               if isinstance(e, LedgerLineItem)]
    ingest(reference, written)
    for view in ("by_session", "hourly"):
        # the view's own SQL (windowing translated) over the reference's plain ledger
        sql = views.engine.views[view].query_sql
        live = sorted(views.engine.query(f"SELECT * FROM {view}").rows)
        assert live == sorted(reference.query(sql).rows)
    assert views.engine.count_and_sum() == reference.count_and_sum()
    reference.close()


def _serve(views: ViewsProcessor, token: str | None) -> Iterator[str]:
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(views.service, token), host="127.0.0.1",
                                           port=port, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_for(lambda: server.started, what="the HTTP API")
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(10)


@pytest.fixture
def api(views: ViewsProcessor) -> Iterator[str]:
    yield from _serve(views, None)


@pytest.fixture
def guarded_api(views: ViewsProcessor) -> Iterator[str]:
    yield from _serve(views, TOKEN)


def test_view_routes_ask_for_the_token_and_answer_a_tenant_its_own_rows_only(
        settings: OnceflowSettings, views: ViewsProcessor, guarded_api: str) -> None:
    items = ledger_items(30)
    produce(settings, items)
    wait_for(lambda: views.engine.count_and_sum()[0] == len(items), what="the line items")
    auth = {"Authorization": f"Bearer {TOKEN}"}
    sql = {"sql": "SELECT DISTINCT tenant_id FROM ledger ORDER BY tenant_id;"}
    json_accept = {"Accept": "application/json"}
    # no token: nothing answers, whichever route
    for path, body in (("/query-stream", sql), ("/ksql", {"ksql": "SHOW TABLES;"}),
                       ("/close-query", {"queryId": "push_x"})):
        r = httpx.post(f"{guarded_api}{path}", json=body, headers={"X-Onceflow-Tenant": "t1"})
        assert r.status_code == 401, (path, r.status_code, r.text)
    # no tenant at all: refused, saying how to name one
    r = httpx.post(f"{guarded_api}/query-stream", json=sql, headers={**auth, **json_accept})
    assert r.status_code == 403 and "X-Onceflow-Tenant" in r.json()["message"]
    # a property naming another tenant than the request's: refused, no rows of either
    r = httpx.post(f"{guarded_api}/query-stream", headers={**auth, **json_accept,
                                                          "X-Onceflow-Tenant": "t1"},
                   json={**sql, "properties": {"onceflow.tenant": "t2"}})
    assert r.status_code == 403 and "'t2'" in r.json()["message"]
    # a tenant's own query: its rows only, by header or by property
    for headers, properties in (({"X-Onceflow-Tenant": "t1"}, {}),
                                ({}, {"onceflow.tenant": "t1"})):
        r = httpx.post(f"{guarded_api}/query-stream", headers={**auth, **json_accept, **headers},
                       json={**sql, "properties": properties})
        assert r.status_code == 200 and r.json()[1:] == [["t1"]], r.text
    # a tenant defines no views for everyone
    r = httpx.post(f"{guarded_api}/ksql", headers={**auth, "X-Onceflow-Tenant": "t1"},
                   json={"ksql": "CREATE TABLE mine AS SELECT tenant_id, count(*) AS n FROM "
                                 "ledger GROUP BY tenant_id EMIT CHANGES;"})
    assert r.status_code == 400 and "mine" not in views.engine.views
    # the platform's operator reads across tenants
    r = httpx.post(f"{guarded_api}/query-stream", headers={**auth, **json_accept, **OPERATOR},
                   json=sql)
    assert [row[0] for row in r.json()[1:]] == ["t0", "t1", "t2"]


def test_a_tenant_cannot_close_another_tenants_push_query(views: ViewsProcessor) -> None:
    _, _, push = views.service.open_query("SELECT * FROM ledger EMIT CHANGES;", tenant="t1")
    assert push is not None
    assert not views.service.close_query(push.query_id, tenant="t2")
    assert push.query_id in views.service.push_queries
    assert views.service.close_query(push.query_id, tenant="t1")


def test_push_query_streams_new_rows_in_ksqldb_format_until_closed(
        settings: OnceflowSettings, views: ViewsProcessor, api: str) -> None:
    items = ledger_items(40)
    produce(settings, items[:20])
    wait_for(lambda: views.engine.count_and_sum()[0] == 20, what="the first 20 line items")
    got: list[list[object]] = []
    header: dict[str, object] = {}
    with httpx.Client(timeout=30) as client, client.stream(
            "POST", f"{api}/query-stream", headers={"Accept": DELIMITED, **OPERATOR},
            json={"sql": "SELECT line_item_id, total_usd FROM ledger EMIT CHANGES;",
                  "properties": {}}) as resp:
        assert resp.status_code == 200
        assert resp.headers["content-type"].startswith(DELIMITED)
        lines = resp.iter_lines()
        header = json.loads(next(lines))
        assert header["columnNames"] == ["line_item_id", "total_usd"]
        assert header["columnTypes"] == ["VARCHAR", "DECIMAL(38,6)"]
        assert [q["id"] for q in views.service.execute("SHOW QUERIES;")[0]["queries"]
                if q["queryType"] == "PUSH"] == [header["queryId"]]
        produce(settings, items[20:])  # rows arrive only now, and only these come out
        for line in lines:
            if line:
                got.append(json.loads(line, parse_float=Decimal))
            if len(got) == len(items) - 20:
                closed = httpx.post(f"{api}/close-query", json={"queryId": header["queryId"]},
                                    headers=OPERATOR)
                assert closed.status_code == 200
                break
    assert sorted(r[0] for r in got) == sorted(i.line_item_id for i in items[20:])
    assert {r[0]: r[1] for r in got} == {i.line_item_id: i.total_usd for i in items[20:]}
    wait_for(lambda: not views.service.push_queries, what="the closed query to be freed")


def test_http_api_shapes_and_errors(settings: OnceflowSettings, views: ViewsProcessor,
                                    api: str) -> None:
    items = ledger_items(12)
    produce(settings, items)
    wait_for(lambda: views.engine.count_and_sum()[0] == len(items), what="12+3 line items")
    pull = httpx.post(f"{api}/query-stream", headers={"Accept": "application/json", **OPERATOR},
                      json={"sql": "SELECT tenant_id, count(*) AS n FROM ledger GROUP BY "
                                   "tenant_id ORDER BY tenant_id;"})
    assert pull.status_code == 200
    head, *rows = pull.json()
    assert head["columnNames"] == ["tenant_id", "n"]
    assert sum(r[1] for r in rows) == len(items)
    ksql = httpx.post(f"{api}/ksql", json={"ksql": "SHOW TABLES; DESCRIBE ledger;",
                                           "streamsProperties": {}}, headers=OPERATOR).json()
    assert [e["@type"] for e in ksql] == ["tables", "sourceDescription"]
    assert all("statementText" in e for e in ksql)
    bad = httpx.post(f"{api}/ksql", json={"ksql": "INSERT INTO ledger VALUES (1);"},
                     headers=OPERATOR)
    assert bad.status_code == 400
    assert bad.json()["error_code"] == 40001 and "INSERT" in bad.json()["message"]
    assert httpx.post(f"{api}/query-stream", content=b"not json",
                      headers=OPERATOR).json()["error_code"] == 40001
    assert httpx.get(f"{api}/healthcheck").json()["isHealthy"] is True
    assert httpx.get(f"{api}/info").json()["KsqlServerInfo"]["serverStatus"] == "RUNNING"
    scoped = httpx.post(f"{api}/query-stream", headers={"Accept": "application/json",
                                                        "X-Onceflow-Tenant": "t1"},
                        json={"sql": "SELECT DISTINCT tenant_id FROM ledger;"}).json()
    assert scoped[1:] == [["t1"]]


@pytest.mark.chaos
def test_views_killed_mid_stream_lose_and_duplicate_nothing(settings: OnceflowSettings) -> None:
    create_topics(settings)
    items = ledger_items(6000)
    produce(settings, items[:2000])
    port = free_port()
    roles = start_roles(settings, [], scheduler=False, views_port=port)
    url = f"http://127.0.0.1:{port}"

    def count_and_sum() -> tuple[int, Decimal]:
        resp = httpx.post(f"{url}/query-stream", headers={"Accept": "application/json",
                                                          **OPERATOR},
                          json={"sql": "SELECT count(*), count(DISTINCT line_item_id), "
                                       "sum(total_usd) FROM ledger;"}, timeout=30)
        _, (n, distinct, total) = json.loads(resp.text, parse_float=Decimal)
        assert n == distinct
        return n, Decimal(total or 0)

    try:
        feeder = threading.Thread(target=produce, args=(settings, items[2000:]))
        feeder.start()
        wait_for(lambda: count_and_sum()[0] > 2000, what="the sink ingesting the second part")
        os.kill(roles[0].pid, signal.SIGKILL)
        roles[0].process.wait(timeout=10)
        feeder.join(60)
        roles = start_roles(settings, [], scheduler=False, views_port=port)
        written = [e for e in events(settings, TopicCatalog(settings)["ledger"].name)
                   if isinstance(e, LedgerLineItem)]
        assert len(written) == len(items)
        expected = (len(written), sum((i.total_usd for i in written), Decimal("0")))
        wait_for(lambda: count_and_sum() == expected, timeout=60,
                 what="every line item, once, after the restart")
    finally:
        stop_roles(roles)


def test_a_line_item_with_a_malformed_amount_is_dead_lettered_and_the_rest_kept(
        settings: OnceflowSettings, views: ViewsProcessor) -> None:
    from onceflow.streams.kafka import DLQ_HEADER_PROCESSOR, read_topic_to_end

    items = ledger_items(10)
    codec = SingleObjectCodec()
    bad = {**items[0].model_dump(mode="json"), "line_item_id": "bad", "event_id": "bad",
           "total_usd": "12.3.4"}
    producer = EventProducer(settings, codec)
    catalog = TopicCatalog(settings)
    producer.send_raw(catalog["ledger"].name, codec.encode_record("ledger.line_item", bad),
                      key=b"bad", partition=0)
    producer.flush()
    produce(settings, items)
    wait_for(lambda: views.engine.count_and_sum()[0] == len(items), what="the good line items")
    dead = wait_for(lambda: list(read_topic_to_end(settings, catalog["deadletters"].name)),
                    what="the bad one dead-lettered")
    assert [dict(m.headers())[DLQ_HEADER_PROCESSOR] for m in dead] == [b"views-sink"]
    assert "bad" not in {r[0] for r in views.engine.query(
        "SELECT line_item_id FROM ledger").rows}


def test_random_bytes_on_the_ledger_topic_are_dead_lettered_and_the_rest_kept(
        settings: OnceflowSettings, views: ViewsProcessor) -> None:
    from onceflow.streams.kafka import DLQ_HEADER_OFFSET, read_topic_to_end

    items = ledger_items(12)
    catalog = TopicCatalog(settings)
    producer = EventProducer(settings, SingleObjectCodec())
    produce(settings, items[:6])
    producer.send_raw(catalog["ledger"].name, b"\xc3\x01" + bytes(range(40)), key=b"junk",
                      partition=0)  # the marker, then an unknown fingerprint
    producer.send_raw(catalog["ledger"].name, b"not avro at all", key=b"junk", partition=0)
    producer.flush()
    produce(settings, items[6:])
    wait_for(lambda: views.engine.count_and_sum()[0] == len(items), what="every line item")

    def junk() -> list[Message]:
        return [m for m in read_topic_to_end(settings, catalog["deadletters"].name)
                if m.key() == b"junk"]

    wait_for(lambda: len(junk()) == 2, what="both junk records dead-lettered")
    dead = junk()
    assert all(DLQ_HEADER_OFFSET in dict(m.headers()) for m in dead)


def test_catching_up_in_whole_row_groups_inserts_every_line_item_once(
        settings: OnceflowSettings) -> None:
    """A sink far behind gathers whole row groups (made small here) and cuts reads
    between inserts; each insert's offsets cover exactly its rows."""
    from onceflow.billing.views import LedgerSink

    create_topics(settings)
    items = ledger_items(1500)
    produce(settings, items)
    engine = ViewEngine()
    sizes: list[int] = []
    ingest = engine.ingest

    def counted(batch, topic, offsets):  # type: ignore[no-untyped-def]
        n = ingest(batch, topic, offsets)
        sizes.append(n)
        return n

    engine.ingest = counted  # type: ignore[method-assign]
    sink = LedgerSink(engine, settings, batch_size=160, row_group_rows=70)
    with running(sink):
        wait_for(sink.caught_up.is_set, what="the sink caught up")
        wait_for(lambda: engine.count_and_sum()[0] == len(items), what="every line item")
    assert engine.count_and_sum() == (len(items), sum((i.total_usd for i in items),
                                                      Decimal("0")))
    assert engine.query("SELECT count(DISTINCT line_item_id) FROM ledger").rows == [
        (len(items),)]
    assert [n for n in sizes if n % 70 == 0 and n > 0], "no insert of whole row groups"
    ends: dict[int, int] = {}
    for m in read_topic_to_end(settings, TopicCatalog(settings)["ledger"].name):
        ends[m.partition() or 0] = (m.offset() or 0) + 1
    assert engine.offsets(TopicCatalog(settings)["ledger"].name) == ends
    engine.close()
