"""`onceflow ledger ...`, `onceflow anomalies`, `onceflow replay`: billing from the CLI."""

from __future__ import annotations

import contextlib
import json
import sys
from decimal import Decimal
from typing import Annotated, Any, Literal

import httpx
import typer

from onceflow.infra.cli.common import (
    OutputFormat,
    cli_settings,
    console,
    fail,
    logged_time,
    read_model,
    ready_settings,
)
from onceflow.settings import OnceflowSettings

__all__ = ["anomalies", "ledger_app", "replay", "views_url"]

ledger_app = typer.Typer(help="Wallets and line items of the billing ledger.",
                         no_args_is_help=True)

ReplayRole = Literal["billing", "scheduler"]


@ledger_app.command("wallet")
def wallet(
    tenant: Annotated[str, typer.Argument(help="tenant id, e.g. tenant-1")],
    sessions: Annotated[bool, typer.Option("--sessions", help="list the tenant's sessions")]
    = False,
    fmt: Annotated[OutputFormat, typer.Option("--format", help="table or json")] = "table",
    at: Annotated[str | None, typer.Option(
        help="as its partials stood at this logged time (ms since the epoch, or ISO 8601)")]
    = None,
) -> None:
    """A tenant's wallet: prepaid credit, charged, reserved for running work, balance and
    what is available, unbilled leakage."""
    from onceflow.billing import Wallet, tenant_wallet_id
    from onceflow.infra.billing_report import wallet_table

    at_ms = logged_time(at)
    # every wallet, with what running work holds against it (a wallet is named by its
    # scope, as the budget held against it is)
    wallets = {w["wallet_id"]: Wallet.from_json(w)
               for w in read_model(cli_settings(), "/wallets", {"at": at_ms, "owner": tenant})}
    mine = wallets.get(tenant_wallet_id(tenant))
    if mine is None:
        known = sorted(w["tenant_id"] for w in read_model(
            cli_settings(), "/wallets", {"at": at_ms, "tenants_only": True}))
        raise fail(f"no wallet for tenant {tenant!r}: nothing has been billed to it yet"
                   + (f" by {at}" if at is not None else "")
                   + (f"; tenants with wallets: {', '.join(known)}" if known else ""), 1)
    session_wallets = sorted(
        (w for w in wallets.values() if w.execution_session_id and w.tenant_id == tenant),
        key=lambda w: (-w.debit_usd, w.execution_session_id))
    if fmt == "json":
        out = mine.as_json()
        out["sessions"] = len(session_wallets)
        if sessions:
            out["session_wallets"] = [w.as_json() for w in session_wallets]
        print(json.dumps(out, indent=2))
        return
    console.print(wallet_table([mine], title=f"wallet of {tenant}"))
    console.print(f"{len(session_wallets)} session(s)" + ("" if sessions else
                                                          " (--sessions lists them)"))
    if sessions:
        console.print(wallet_table(session_wallets, title="sessions"))


@ledger_app.command("tail")
def tail(
    follow: Annotated[bool, typer.Option("--follow", "-f", help="keep waiting for new items")]
    = False,
    limit: Annotated[int, typer.Option(help="stop after N line items (0: no limit)", min=0)] = 0,
    tenant: Annotated[str | None, typer.Option(help="only this tenant's line items")] = None,
    fmt: Annotated[Literal["text", "json"], typer.Option("--format", help="text or json")]
    = "text",
) -> None:
    """Print line items as the ledger writes them."""
    from onceflow.schemas import CodecError, LedgerLineItem, SingleObjectCodec
    from onceflow.streams.kafka import read_topic_to_end
    from onceflow.streams.topics.catalog import TopicCatalog

    settings = ready_settings()
    codec = SingleObjectCodec()
    shown = 0
    for msg in read_topic_to_end(settings, TopicCatalog(settings)["ledger"].name,
                                 follow=follow):
        try:
            item = codec.decode(msg.value() or b"")
        except CodecError:
            continue
        if not isinstance(item, LedgerLineItem) or (tenant and item.tenant_id != tenant):
            continue
        if fmt == "json":
            line = json.dumps(item.model_dump(mode="json"))
        else:
            qty = (f"{item.cpu_seconds} cpu-s" if item.line_item_type == "workunit_cpu"
                   else f"{item.llm_tokens} tokens ({item.model})")
            flag = "" if item.billed else f"  UNBILLED {item.leakage_reason}"
            line = (f"{item.line_item_id[:12]} {item.tenant_id} {item.execution_session_id} "
                    f"{item.work_unit_id} #{item.attempt_index} {item.line_item_type} {qty} "
                    f"{item.total_usd} {item.currency}{flag}")
        sys.stdout.write(line + "\n")
        shown += 1
        if limit and shown >= limit:
            break
    sys.stdout.flush()


def anomalies(
    reconcile_now: Annotated[bool, typer.Option(
        "--reconcile", help="first run the cross-partition checks and record what they find")]
    = False,
    fail_on_flag: Annotated[bool, typer.Option(
        "--fail-on-flag", help="exit 2 when any finding has severity flag")] = False,
    fmt: Annotated[OutputFormat, typer.Option("--format", help="table or json")] = "table",
) -> None:
    """The billing anomalies found so far (by the checker, and by --reconcile)."""
    from onceflow.billing import read_anomalies, read_billing_records, reconcile
    from onceflow.infra.billing_report import anomaly_table
    from onceflow.schemas import SingleObjectCodec
    from onceflow.streams.kafka import EventProducer
    from onceflow.streams.topics.catalog import TopicCatalog

    settings = ready_settings()
    if reconcile_now:
        known = {f.event_id for f in read_anomalies(settings)}
        found = [f for f in reconcile(read_billing_records(settings), settings.billing)
                 if f.event_id not in known]
        if found:
            producer = EventProducer(settings, SingleObjectCodec())
            topic = TopicCatalog(settings)["anomalies"]
            for f in found:
                producer.send(topic, f)
            producer.flush()
        if fmt == "table":
            console.print(f"reconciliation recorded {len(found)} new finding(s)")
    findings = sorted(read_anomalies(settings), key=lambda f: (f.occurred_at, f.event_id))
    flagged = sum(1 for f in findings if f.severity == "flag")
    if fmt == "json":
        print(json.dumps([f.model_dump(mode="json") for f in findings], indent=2))
    elif findings:
        console.print(anomaly_table(findings))
        console.print(f"{len(findings)} finding(s), {flagged} flagged")
    else:
        console.print("no billing anomalies")
    if fail_on_flag and flagged:
        raise typer.Exit(2)


def replay(
    role: Annotated[ReplayRole, typer.Argument(help="billing (ledger and wallets) or scheduler")],
    verify: Annotated[bool, typer.Option(
        "--verify", help="compare with the live state; exit 1 when they differ")] = False,
    fmt: Annotated[OutputFormat, typer.Option("--format", help="table or json")] = "table",
) -> None:
    """Rebuild a role's state from offset 0 into scratch state and fingerprint it."""
    from onceflow.billing import Ledger, WalletFolder, cost_estimator, load_price_book
    from onceflow.streams.runtime import verify_replay
    from onceflow.streams.scheduler import Scheduler
    from onceflow.streams.topics.catalog import TopicCatalog
    from onceflow.streams.types import Reducer

    settings = ready_settings()
    catalog = TopicCatalog(settings)
    targets: list[tuple[Reducer, str]]
    if role == "billing":
        targets = [
            (Ledger(settings.billing, load_price_book(settings.billing)), catalog["ledger"].name),
            (WalletFolder(settings.billing, catalog["ledger"]), catalog["wallets"].name),
        ]
    else:
        targets = [(Scheduler(settings, catalog=catalog,
                              estimator=cost_estimator(settings.billing)),
                    catalog["workunits"].name)]
    checks = [verify_replay(reducer, settings, topic) for reducer, topic in targets]
    report = [{
        "processor": c.processor, "fact_topic": c.fact_topic, "equal": c.equal,
        "replay_seconds": round(c.seconds, 3), "partitions_without_state": c.missing_state,
        "first_difference": c.first_difference(),
        "partitions": [{"partition": p.partition, "fact_offset": p.fact_offset, "keys": p.keys,
                        "live": p.live, "replayed": p.replayed} for p in c.partitions],
    } for c in checks]
    if fmt == "json":
        print(json.dumps(report, indent=2))
    for c in checks:
        if fmt == "table":
            verdict = ("[green]equal[/]" if c.equal else "[red]DIFFERENT[/]") if verify else ""
            keys = sum(p.keys for p in c.partitions)
            console.print(f"{c.processor}: {len(c.partitions)} partition(s), {keys} keys, "
                          f"replayed from {c.fact_topic} in {c.seconds:.2f}s {verdict}")
            for p in c.partitions:
                console.print(f"  partition {p.partition} @ fact offset {p.fact_offset}: "
                              f"live {p.live[:16]} replay {p.replayed[:16]}")
            if c.missing_state:
                console.print(f"  no live state here for partition(s) {c.missing_state}")
            if verify and not c.equal:
                console.print(f"  first difference: {c.first_difference() or 'no live state'}")
    if verify and not all(c.equal for c in checks):
        raise typer.Exit(1)


def views_url(settings: OnceflowSettings) -> str:
    """Where the views API is: ONCEFLOW_VIEWS_URL (`views_url`), else what `up` recorded."""
    from onceflow.infra.stack import read_stack

    if settings.views_url:
        return settings.views_url.rstrip("/")
    stack = read_stack(settings)
    if stack is None or not stack.views_url:
        raise fail("no views API known: run `onceflow up` (it starts one), or set "
                    "ONCEFLOW_VIEWS_URL to a running `onceflow worker views`")
    return stack.views_url


def _headers(tenant: str | None) -> dict[str, str]:
    """A view request's tenant (the platform's operator's, across tenants, unless one is
    named) and the API token when one is set."""
    from onceflow.schemas import PLATFORM_TENANT
    from onceflow.streams.auth import bearer_headers

    return {"X-Onceflow-Tenant": tenant or PLATFORM_TENANT,
            **bearer_headers(cli_settings().api_token)}


def _post(url: str, path: str, body: dict[str, object], tenant: str | None,
          accept: str | None = None) -> httpx.Response:

    headers = _headers(tenant)
    if accept:
        headers["Accept"] = accept
    return httpx.post(f"{url}{path}", json=body, headers=headers, timeout=60)


@ledger_app.command("query")
def query(
    sql: Annotated[str, typer.Argument(help="a ksql statement: SELECT ... [EMIT CHANGES], "
                                            "CREATE TABLE ... AS SELECT, SHOW, DESCRIBE, DROP")],
    fmt: Annotated[OutputFormat, typer.Option("--format", help="table or json")] = "table",
    tenant: Annotated[str | None, typer.Option(help="only this tenant's rows")] = None,
    limit: Annotated[int, typer.Option(help="push queries: stop after N rows (0: until "
                                            "Ctrl-C)", min=0)] = 0,
) -> None:
    """Ask the ledger in SQL: pull queries print once, push queries (EMIT CHANGES) stream."""
    from rich.live import Live
    from rich.table import Table

    from onceflow.billing.views import DELIMITED, parse_statements

    settings = cli_settings()
    url = views_url(settings)
    try:
        statements = parse_statements(sql)
    except ValueError as exc:
        raise fail(str(exc)) from None
    if any(s.kind != "select" for s in statements):
        try:
            resp = _post(url, "/ksql", {"ksql": sql, "streamsProperties": {}}, tenant)
        except httpx.HTTPError as exc:
            raise fail(f"views API at {url} unreachable: {exc}", 1) from None
        if resp.status_code != 200:
            raise fail(resp.json().get("message", resp.text))
        entries = resp.json()
        if fmt == "json":
            print(json.dumps(entries, indent=2))
            return
        for e in entries:
            console.print(_entry_text(e))
        return
    if len(statements) != 1:
        raise fail("send one SELECT at a time")
    push = statements[0].push
    columns: list[str] = []
    rows: list[list[object]] = []
    out_table = Table(title=sql)
    query_id = None
    with httpx.Client(timeout=None) as client, client.stream(
            "POST", f"{url}/query-stream", json={"sql": sql, "properties": {}},
            headers={"Accept": DELIMITED, **_headers(tenant)},
    ) as resp:
        if resp.status_code != 200:
            resp.read()
            raise fail(resp.json().get("message", resp.text))
        lines = resp.iter_lines()
        header = json.loads(next(lines))
        columns, query_id = header["columnNames"], header["queryId"]
        for c in columns:
            out_table.add_column(c)
        live = Live(out_table, console=console, transient=False) if push and fmt == "table" \
            else None
        try:
            if live:
                live.start()
            for line in lines:
                if not line.strip():
                    continue
                # Amounts arrive as exact JSON numbers; keep them exact.
                row = json.loads(line, parse_float=Decimal)
                rows.append(row)
                if fmt == "json" and push:
                    print(json.dumps(dict(zip(columns, row, strict=False)), default=str),
                          flush=True)
                out_table.add_row(*("NULL" if v is None else str(v) for v in row))
                if live:
                    live.refresh()
                if push and limit and len(rows) >= limit:
                    break
        except KeyboardInterrupt:
            pass
        finally:
            if live:
                live.stop()
            if push and query_id:
                with contextlib.suppress(httpx.HTTPError):
                    _post(url, "/close-query", {"queryId": query_id}, tenant)
    if fmt == "json" and not push:
        # Decimals as strings: exact, which a JSON number read as a float would not be.
        print(json.dumps([dict(zip(columns, r, strict=False)) for r in rows], indent=2,
                         default=str))
    elif fmt == "table" and not push:
        console.print(out_table)
        console.print(f"{len(rows)} row(s)")


def _entry_text(entry: dict[str, Any]) -> str:
    kind = entry.get("@type")
    if kind == "currentStatus":
        status = entry.get("commandStatus") or {}
        return f"{status.get('status')}: {status.get('message')}"
    if kind in ("tables", "streams", "queries"):
        names = [str(i.get("name") or i.get("id")) for i in entry.get(str(kind)) or []]
        return f"{kind}: " + (", ".join(names) or "(none)")
    if kind == "sourceDescription":
        d = entry["sourceDescription"]
        fields = ", ".join(f"{f['name']} {f['schema']['type']}" for f in d["fields"])
        return f"{d['name']} ({d['type']}): {fields}"
    return json.dumps(entry)


@ledger_app.command("views")
def list_views(
    fmt: Annotated[OutputFormat, typer.Option("--format", help="table or json")] = "table",
) -> None:
    """The tables and streams over the ledger (built-in and created)."""

    settings = cli_settings()
    url = views_url(settings)
    resp = _post(url, "/ksql", {"ksql": "SHOW TABLES; SHOW STREAMS;"}, None)
    if resp.status_code != 200:
        raise fail(resp.json().get("message", resp.text), 1)
    tables, streams = resp.json()
    rows = [*tables["tables"], *streams["streams"]]
    if fmt == "json":
        print(json.dumps(rows, indent=2))
        return
    from rich.table import Table

    out = Table("name", "type", "windowed", "built in", title="views over the ledger")
    for r in rows:
        out.add_row(r["name"], r["type"], "yes" if r["isWindowed"] else "no",
                    "yes" if r["builtIn"] else "no")
    console.print(out)
