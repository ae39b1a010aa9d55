"""`onceflow ledger ...`, `onceflow anomalies`, `onceflow replay`: billing from the CLI."""

from __future__ import annotations

import json
import sys
from typing import Annotated, Literal

import typer

from streams.settings import OnceflowSettings

__all__ = ["anomalies", "ledger_app", "replay"]

ledger_app = typer.Typer(help="Wallets and line items of the billing ledger.",
                         no_args_is_help=True)

OutputFormat = Literal["table", "json"]
ReplayRole = Literal["billing", "scheduler"]


def _ready_settings() -> OnceflowSettings:
    from infra.cli.app import _require_broker, _settings
    from infra.stack import local_settings

    settings = local_settings(_settings())
    _require_broker(settings)
    return settings


@ledger_app.command("wallet")
def wallet(
    tenant: Annotated[str, typer.Argument(help="tenant id, e.g. tenant-1")],
    sessions: Annotated[bool, typer.Option("--sessions", help="list the tenant's sessions")]
    = False,
    fmt: Annotated[OutputFormat, typer.Option("--format", help="table or json")] = "table",
) -> None:
    """A tenant's wallet: charged, prepaid credit and balance, unbilled leakage."""
    from billing import read_wallets, tenant_wallet_id
    from infra.billing_report import wallet_table
    from infra.cli.app import _fail, console

    settings = _ready_settings()
    wallets = read_wallets(settings)
    mine = wallets.get(tenant_wallet_id(tenant))
    if mine is None:
        known = sorted({w.tenant_id for w in wallets.values()})
        raise _fail(f"no wallet for tenant {tenant!r}: nothing has been billed to it yet"
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
    from schemas import CodecError, LedgerLineItem, SingleObjectCodec
    from streams.kafka import read_topic_to_end
    from streams.topics.catalog import TopicCatalog

    settings = _ready_settings()
    codec = SingleObjectCodec()
    shown = 0
    for msg in read_topic_to_end(settings, TopicCatalog(settings)["ledger"].name,
                                 timeout_s=10**9 if follow else 600,
                                 idle_ms=10**9 if follow else None):
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
    from billing import read_anomalies, read_billing_records, reconcile
    from infra.billing_report import anomaly_table
    from infra.cli.app import console
    from schemas import SingleObjectCodec
    from streams.kafka import EventProducer
    from streams.topics.catalog import TopicCatalog

    settings = _ready_settings()
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
    from billing import Ledger, WalletFolder, load_price_book
    from infra.cli.app import console
    from streams.runtime import verify_replay
    from streams.scheduler import Scheduler
    from streams.topics.catalog import TopicCatalog
    from streams.types import Reducer

    settings = _ready_settings()
    catalog = TopicCatalog(settings)
    targets: list[tuple[Reducer, str]]
    if role == "billing":
        targets = [
            (Ledger(settings.billing, load_price_book(settings.billing)), catalog["ledger"].name),
            (WalletFolder(settings.billing, catalog["ledger"]), catalog["wallets"].name),
        ]
    else:
        targets = [(Scheduler(settings, catalog=catalog), catalog["workunits"].name)]
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
