"""`onceflow`: run the local stack, provision topics, submit work, watch the log."""

from __future__ import annotations

import json
import secrets
import sys
import time
from pathlib import Path
from typing import Annotated, Any, Literal

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from onceflow.infra.cli.common import (
    KINDS,
    PRIORITIES,
    OutputFormat,
    cli_settings,
    console,
    err_console,
    fail,
    logged_time,
    read_model,
    reading,
    require_broker,
)
from onceflow.infra.cli.control import register as register_controls
from onceflow.infra.cli.ledger import anomalies, ledger_app, replay
from onceflow.infra.cli.sessions import register as register_sessions
from onceflow.infra.cli.submit import SubmitInputError, build_unit, generated_record, unit_from_file
from onceflow.infra.cli.workers import worker_app
from onceflow.schemas import CodecError, SingleObjectCodec
from onceflow.settings import OnceflowSettings
from onceflow.streams.ids import payload_digest

__all__ = ["app", "main"]

app = typer.Typer(
    help="onceflow: durable, exactly-once-accounted execution of AI work on Kafka.",
    no_args_is_help=True,
    add_completion=False,
)
topics_app = typer.Typer(help="Create and inspect the topic catalog.", no_args_is_help=True)
app.add_typer(topics_app, name="topics")
app.add_typer(worker_app, name="worker")
app.add_typer(ledger_app, name="ledger")
register_controls(app)
register_sessions(app)
app.command()(anomalies)
app.command()(replay)


TailFormat = Literal["text", "json"]


# -- stack ----------------------------------------------------------------------------


@app.command()
def up(
    agents: Annotated[int, typer.Option(help="node agents to start (n1..nN)", min=0)] = 3,
    scheduler: Annotated[bool, typer.Option(help="start the scheduler")] = True,
    concurrency: Annotated[int, typer.Option(help="units each agent runs at once", min=1)] = 4,
    region: Annotated[str | None, typer.Option(help="put every agent in this region")] = None,
    llm_provider: Annotated[str, typer.Option("--llm-provider", help="stub or openai")] = "stub",
    fresh: Annotated[bool, typer.Option(
        "--fresh", help="wipe the broker's data and the roles' state first (every unit, "
                        "offset and ledger row is lost)")] = False,
    members: Annotated[str | None, typer.Option(
        help="members per role, e.g. scheduler=3,billing=2,trust=2 (roles: scheduler, "
             "billing, trust, limiter, views; default: the members setting, else one "
             "each)")] = None,
) -> None:
    """Start the local stack: Kafka, topics, scheduler, billing, views and node agents.

    The broker's data and the roles' state are kept across `down` / `up`."""
    from onceflow.infra.broker import BrokerStartError
    from onceflow.infra.roles import RoleStartError, parse_members
    from onceflow.infra.stack import stack_up, start_stack_roles

    try:
        counts = parse_members(members) if members is not None else None
    except ValueError as exc:
        raise fail(f"--members {exc}") from None
    settings = cli_settings()
    if fresh:
        _reset(settings)
    began = time.monotonic()
    try:
        state, statuses, started = stack_up(settings)
    except BrokerStartError as exc:
        raise fail(str(exc), 1) from None
    verb = f"started in {time.monotonic() - began:.1f} s" if started else "already running"
    console.print(f"Kafka {verb} at [bold]{state.bootstrap}[/] (pid {state.broker_pid}), "
                  f"data in {state.broker_data or settings.stack_dir / 'kafka'}")
    bad = [s for s in statuses if s.error]
    for s in bad:
        err_console.print(f"[yellow]topic {s.name}[/]: {s.error}")
    console.print(f"{sum(1 for s in statuses if s.exists)} topics ready "
                  f"({sum(1 for s in statuses if s.created)} created)")
    _check_provider(llm_provider)
    try:
        roles = start_stack_roles(settings, agents=agents, scheduler=scheduler,
                                  concurrency=concurrency, region=region,
                                  llm_provider=llm_provider, members=counts)
    except RoleStartError as exc:
        raise fail(f"a role did not start: {exc}", 1) from None
    from onceflow.infra.stack import metrics_urls, read_stack

    metrics = metrics_urls(settings)
    for name, pid in sorted(roles.items()):
        console.print(f"{name} running (pid {pid})"
                      + (f", metrics at {metrics[name]}" if name in metrics else ""))

    stack = read_stack(settings)
    if stack is not None and stack.views_url:
        console.print(f"dashboard at {stack.views_url}/dashboard/")
        console.print(f"API at {stack.views_url}/v1 (spec at {stack.views_url}/openapi.json)")
        console.print(f"views API (ksqlDB-shaped) at {stack.views_url}: "
                      "`onceflow ledger query \"SELECT * FROM wallet_balance;\"`")


def _check_provider(name: str) -> None:
    if name not in ("stub", "openai"):
        raise fail(f"--llm-provider {name!r} is not known: use stub or openai")


def _reset(settings: OnceflowSettings) -> None:
    from onceflow.infra.stack import pid_alive, read_stack, reset_stack

    stack = read_stack(settings)
    if stack is not None and pid_alive(stack.broker_pid):
        raise fail("the stack is running: `onceflow down` first, then reset")
    removed = reset_stack(settings)
    if removed:
        console.print("[bold yellow]wiped[/] " + ", ".join(str(p) for p in removed)
                      + ": every topic, unit, offset, ledger row and role state is gone")
    else:
        console.print(f"nothing to wipe under {settings.stack_dir}")


@app.command()
def reset() -> None:
    """Wipe the local stack's data: the broker's topics and offsets and the roles' state."""
    _reset(cli_settings())


@app.command()
def down() -> None:
    """Stop everything `onceflow up` started (the data stays for the next `up`)."""
    from onceflow.infra.stack import stack_down

    stopped = stack_down(cli_settings())
    if not stopped:
        console.print("nothing was running")
    for name in stopped:
        console.print(f"stopped {name}")


@app.command()
def status(
    fmt: Annotated[OutputFormat, typer.Option("--format", help="table or json")] = "table",
    at: Annotated[str | None, typer.Option(
        help="units by state as the log held them at this logged time (ms since the "
             "epoch, or ISO 8601)")] = None,
) -> None:
    """The local stack: its processes, topics, units by state, nodes, capacity and limits
    (asked of the read model, so as fast on a long log as on a short one)."""
    from onceflow.infra.stack import pid_alive, read_stack
    from onceflow.streams.topics.provisioning import describe_topics

    settings = cli_settings()
    at_ms = logged_time(at)
    stack = read_stack(settings)
    report: dict[str, Any] = {
        "bootstrap": settings.bootstrap_servers,
        "broker": None if stack is None else {
            "pid": stack.broker_pid, "alive": pid_alive(stack.broker_pid),
        },
        "processes": {} if stack is None else {
            n: {"pid": p, "alive": pid_alive(p)} for n, p in sorted(stack.processes.items())
        },
        "topics": [],
    }
    broker_up = stack is not None and pid_alive(stack.broker_pid)
    report["units"] = {}
    report["nodes"] = []
    if broker_up or settings.broker_profile == "cluster":
        report["topics"] = [
            {"name": t.name, "exists": t.exists, "partitions": t.partitions}
            for t in describe_topics(settings, timeout=5)
        ]
        views = stack.processes.get("views") if stack is not None else None
        if all(t["exists"] for t in report["topics"]) and (
                settings.views_url is not None or (views is not None and pid_alive(views))):
            report.update(read_model(settings, "/status", {"at": at_ms}))
        from onceflow.infra.observe import role_members

        report["members"] = [g for g in role_members(settings) if g["members"]]
    if fmt == "json":
        print(json.dumps(report, indent=2))
        return
    if not broker_up and settings.broker_profile == "embedded":
        console.print("local stack is [bold red]down[/] (run `onceflow up`)")
        return
    console.print(f"broker [bold green]up[/] at {settings.bootstrap_servers}")
    for name, proc in report["processes"].items():
        state = "[green]running[/]" if proc["alive"] else "[red]stopped[/]"
        console.print(f"  {name}: {state} (pid {proc['pid']})")
    if report.get("members"):
        groups = Table("role", "group", "member", "host", "partitions",
                       title="members (partitions each owns; none: standing by)")
        for g in report["members"]:
            for m in g["members"]:
                groups.add_row(g["role"], g["group"], m["member"], m["host"],
                               ",".join(map(str, m["partitions"])) or "-")
        console.print(groups)
    units = report["units"]
    if units:
        table = Table("state", "units", title=f"work units ({units['total']})")
        for state_name, n in units["by_state"].items():
            table.add_row(state_name, str(n))
        console.print(table)
    capacity = report.get("capacity")
    if capacity:
        window = capacity.get("window") or {}
        console.print(f"admission mode [bold]{capacity['mode']}[/], replicas wanted "
                      f"{capacity['replicas'] if capacity['replicas'] is not None else '-'}"
                      + (f"; last window: queue {window['queue']}, wait p95 "
                         f"{window['wait_p95_ms']:.0f} ms, utilization "
                         f"{window['utilization']:.0%}" if window else ""))
    if report["nodes"]:
        nodes = Table("node", "health", "trust", "region", "kinds", "queue", "util",
                      "free slots", "completed", "heartbeat age", title="nodes")
        for n in report["nodes"]:
            trust = "-" if n["trust"] is None else f"{n['trust']:.2f}" + (
                "" if n["breaker"] == "closed" else f" (breaker {n['breaker']})")
            nodes.add_row(n["node_id"], n["health"], trust, str(n["region"] or "-"),
                          ",".join(n["kinds"]), str(n["queue_depth"]),
                          f"{n['utilization']:.0%}", str(n["free_slots"]),
                          str(units.get("completed_by_node", {}).get(n["node_id"], 0)),
                          f"{n['heartbeat_age_s']}s")
        console.print(nodes)
    if report.get("limits"):
        _print_limits(report["limits"])
    table = Table("topic", "partitions", "exists")
    for t in report["topics"]:
        table.add_row(t["name"], str(t["partitions"]), "yes" if t["exists"] else "no")
    console.print(table)


@app.command()
def limits(
    fmt: Annotated[OutputFormat, typer.Option("--format", help="table or json")] = "table",
) -> None:
    """What holds work back now: slots per limited scope, rate windows, budget holds,
    provider pauses, open breakers."""
    report = read_model(cli_settings(), "/limits")
    if fmt == "json":
        print(json.dumps(report, indent=2))
        return
    _print_limits(report)


def _print_limits(report: dict[str, Any]) -> None:
    if report["slots"]:
        slots = Table("scope", "in use", "limit", "waiting", title="concurrency slots")
        for s in report["slots"]:
            slots.add_row(s["scope"], str(s["in_use"]), str(s["limit"] or "-"),
                          str(s["waiting"]))
        console.print(slots)
    if report["rates"]:
        rates = Table("window", "per minute", "available now", title="rate windows")
        for r in report["rates"]:
            rates.add_row(r["window"], str(r["per_minute"]), f"{r['available']:g}")
        console.print(rates)
    if report["budgets"]:
        budgets = Table("budget", "budget (USD)", "charged", "reserved", "available", "waiting",
                        title="budget holds")
        for b in report["budgets"]:
            budgets.add_row(b["scope"], b["budget_usd"], b["charged_usd"], b["reserved_usd"],
                            b["available_usd"], str(b["waiting"]))
        console.print(budgets)
    for p in report["pauses"]:
        console.print(f"[yellow]paused[/] {p['scope']} ({p['provider'] or '?'}) for "
                      f"{p['remaining_ms'] / 1000:.1f} s more: the provider asked to wait")
    for b in report["breakers"]:
        console.print(f"[yellow]breaker {b['breaker']}[/] on node {b['node_id']}"
                      + (f" until {b['until']}" if b["breaker"] == "open" else ""))


# -- topics -----------------------------------------------------------------------------


@topics_app.command("create")
def topics_create() -> None:
    """Create every catalog topic that is missing (safe to run again)."""
    from onceflow.streams.topics.provisioning import create_topics

    settings = cli_settings()
    require_broker(settings)
    for s in create_topics(settings):
        state = "created" if s.created else ("exists" if s.exists else "FAILED")
        line = f"{s.name:<28} {state:<8} partitions={s.partitions}"
        console.print(line + (f"  [yellow]{s.error}[/]" if s.error else ""))


@topics_app.command("manifest")
def topics_manifest(
    cluster: Annotated[str, typer.Option(help="the Strimzi Kafka cluster's name")] = "onceflow",
    namespace: Annotated[str, typer.Option(help="the Kubernetes namespace")] = "onceflow",
) -> None:
    """The topic catalog as Strimzi KafkaTopic resources (YAML), for `kubectl apply -f -`;
    partitions, replicas, cleanup policies and retention from the settings."""
    from onceflow.infra.deploy import topics_yaml

    print(topics_yaml(cli_settings(), cluster, namespace), end="")


@topics_app.command("describe")
def topics_describe(
    fmt: Annotated[OutputFormat, typer.Option("--format")] = "table",
) -> None:
    """The catalog beside the live partition counts and configs."""
    from onceflow.streams.topics.catalog import TopicCatalog
    from onceflow.streams.topics.provisioning import describe_topics

    settings = cli_settings()
    require_broker(settings)
    live = {s.name: s for s in describe_topics(settings)}
    rows: list[dict[str, Any]] = []
    for topic in TopicCatalog(settings):
        s = live[topic.name]
        rows.append({
            "name": topic.name, "key": topic.key, "partition_by": topic.partition_by,
            "cleanup_policy": topic.cleanup_policy, "retention_ms": topic.retention_ms,
            "partitions": topic.partitions, "live_exists": s.exists,
            "live_partitions": s.partitions, "live_configs": s.configs,
            "description": topic.description,
        })
    if fmt == "json":
        print(json.dumps(rows, indent=2))
        return
    table = Table("topic", "key", "partition by", "cleanup", "parts (live)", "live configs")
    for r in rows:
        configs = ", ".join(f"{k}={v}" for k, v in r["live_configs"].items()) or "-"
        live_parts = str(r["live_partitions"]) if r["live_exists"] else "missing"
        table.add_row(r["name"], r["key"], r["partition_by"], r["cleanup_policy"],
                      f"{r['partitions']} ({live_parts})", configs)
    console.print(table)


# -- submit ---------------------------------------------------------------------------------


@app.command()
def submit(
    count: Annotated[int, typer.Option(help="generate N work units", min=0)] = 0,
    file: Annotated[Path | None, typer.Option(help="a JSON file holding one work unit")] = None,
    work_unit_id: Annotated[str | None, typer.Option("--work-unit-id")] = None,
    kind: Annotated[str, typer.Option(help="cpu, llm_pod or tool")] = "cpu",
    tenant: Annotated[str, typer.Option(help="tenant id")] = "tenant-demo",
    session: Annotated[str | None, typer.Option(help="execution session id")] = None,
    priority: Annotated[str, typer.Option(help="critical, p0, p1 or p2")] = "p2",
    region: Annotated[str | None, typer.Option()] = None,
    effect: Annotated[str, typer.Option(help="PURE, READ_ONLY_NONDET or WORLD_MUTATING")] = "PURE",
    idempotency_class: Annotated[str, typer.Option("--idempotency-class")] = "none",
    handler: Annotated[str | None, typer.Option(help="cpu handler name")] = None,
    simulated_ms: Annotated[int, typer.Option("--simulated-ms", min=0)] = 0,
    prompt: Annotated[str | None, typer.Option()] = None,
    model: Annotated[str | None, typer.Option()] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="no progress bar")] = False,
) -> None:
    """Submit one work unit (from flags or --file) or --count generated ones."""
    from onceflow.streams.kafka import DeliveryError, EventProducer
    from onceflow.streams.topics.catalog import TopicCatalog, partition_for

    settings = cli_settings()
    fields: dict[str, Any] = {
        "kind": kind, "tenant_id": tenant, "priority": priority, "region": region,
        "effect": effect, "idempotency_class": idempotency_class, "handler": handler,
        "simulated_ms": simulated_ms, "prompt": prompt, "model": model,
    }
    if session:
        fields["execution_session_id"] = session
    try:
        if file is not None:
            if count:
                raise SubmitInputError("use either --file or --count, not both")
            unit = unit_from_file(file, {"work_unit_id": work_unit_id, **fields})
        else:
            unit = build_unit({k: v for k, v in {"work_unit_id": work_unit_id, **fields}.items()
                               if v is not None})
    except SubmitInputError as exc:
        raise fail(str(exc)) from None
    require_broker(settings)
    codec = SingleObjectCodec()
    producer = EventProducer(settings, codec)
    topic = TopicCatalog(settings)["submissions"]
    try:
        partitions = producer.partitions_of(topic.name)
    except RuntimeError as exc:
        raise fail(str(exc)) from None
    if not count:
        producer.send(topic, unit)
        try:
            producer.flush()
        except DeliveryError as exc:
            raise fail(str(exc), 1) from None
        console.print(f"submitted {unit.work_unit_id} (event {unit.event_id})")
        return

    template = unit.model_dump()
    digest = payload_digest(unit)
    run_id = secrets.token_hex(4)
    now_ms = int(time.time() * 1000)
    encode = codec.encode_record
    send = producer.send_raw
    started = time.perf_counter()
    with Progress(TextColumn("submitting"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=err_console, disable=quiet) as progress:
        task = progress.add_task("submit", total=count)
        step = max(1, count // 100)
        for i in range(count):
            record = generated_record(template, digest, run_id, i, now_ms)
            send(topic.name, encode("workunit.submitted", record), key=record["event_id"],
                 partition=partition_for(record["work_unit_id"], partitions))
            if i % step == step - 1:
                progress.update(task, completed=i + 1)
                producer.poll(0)
        try:
            producer.flush(120)
        except DeliveryError as exc:
            raise fail(str(exc), 1) from None
        progress.update(task, completed=count)
    elapsed = time.perf_counter() - started
    console.print(f"submitted {count} work units (run {run_id}) in {elapsed:.2f}s: "
                  f"{count / elapsed:,.0f} units/s")


# -- operators ------------------------------------------------------------------------------------


@app.command()
def resolve(
    work_unit_id: Annotated[str, typer.Argument(help="the unit parked in needs_operator")],
    action: Annotated[str, typer.Option(help="retry, mark_done or abandon")],
    note: Annotated[str, typer.Option(help="why, for the record")] = "",
    operator: Annotated[str, typer.Option(help="who decides")] = "operator",
    result_file: Annotated[Path | None, typer.Option(
        "--result-file", help="with mark_done: the result, stored in the content store")] = None,
) -> None:
    """Resolve a unit parked in needs_operator: run it again, mark it done, or abandon it."""
    import uuid

    from onceflow.infra.cli.control import send_control
    from onceflow.infra.steering import wait_applied
    from onceflow.schemas import CONTROL_NOT_TAKEN, ControlOperatorResolved

    if action not in ("retry", "mark_done", "abandon"):
        raise fail(f"--action {action!r} is not known: use retry, mark_done or abandon")
    if result_file is not None and action != "mark_done":
        raise fail("--result-file goes with --action mark_done only")
    if result_file is not None and not result_file.is_file():
        raise fail(f"{result_file} does not exist; pass the file that holds the result")
    settings = cli_settings()
    require_broker(settings)
    ref = None
    if result_file is not None:
        from onceflow.streams.content import open_content_store

        ref = open_content_store(settings).put(result_file.read_bytes())
    event = ControlOperatorResolved(
        event_id=uuid.uuid4().hex, occurred_at=int(time.time() * 1000),
        work_unit_id=work_unit_id, resolution=action,  # type: ignore[arg-type]
        operator=operator, note=note, result_ref=ref,
    )
    send_control(settings, event)
    with reading():
        records = wait_applied(settings, event.event_id, 1, 10.0)
    if not records:
        console.print(f"{action} requested for {work_unit_id} (event {event.event_id}); no "
                      "scheduler has applied it yet (is `onceflow up` running?)")
        return
    if records[0].outcome in CONTROL_NOT_TAKEN:
        raise fail(f"{action} refused: {records[0].detail}", 1)
    console.print(f"{records[0].detail} (by {operator}, event {event.event_id})")


# -- tail ---------------------------------------------------------------------------------------


def _render(msg: Any, codec: SingleObjectCodec, fmt: TailFormat, dead_letters: bool) -> str:
    from onceflow.streams.kafka import dead_letter_from_message

    meta = {"topic": msg.topic(), "partition": msg.partition(), "offset": msg.offset()}
    if dead_letters:
        dl = dead_letter_from_message(msg)
        if fmt == "json":
            data = dl.model_dump(mode="json", exclude={"payload", "payload_key"})
            data["payload_hex"] = dl.payload[:64].hex()
            return json.dumps({**meta, **data})
        return (f"{msg.partition()}@{msg.offset()} DEAD LETTER from {dl.origin_topic}"
                f"[{dl.origin_partition}]@{dl.origin_offset} by {dl.processor}: "
                f"{dl.error_type}: {dl.error}")
    try:
        event = codec.decode(msg.value() or b"")
    except CodecError as exc:
        if fmt == "json":
            return json.dumps({**meta, "undecodable": str(exc)})
        return f"{msg.partition()}@{msg.offset()} UNDECODABLE {type(exc).__name__}: {exc}"
    if fmt == "json":
        return json.dumps({**meta, **event.model_dump(mode="json")})
    details = {k: v for k, v in event.model_dump(mode="json").items()
               if k not in ("event_id", "event_type", "occurred_at", "schema_version",
                            "causation_id", "execution_session_id", "correlation_id")
               and v not in (None, "", [], {}, 0)}
    shown = " ".join(f"{k}={v}" for k, v in list(details.items())[:8])
    return f"{msg.partition()}@{msg.offset()} {event.event_type} {event.event_id[:12]} {shown}"


@app.command()
def tail(
    topic: Annotated[str, typer.Argument(help="topic name or catalog role, e.g. submissions")],
    fmt: Annotated[TailFormat, typer.Option("--format", help="text or json")] = "text",
    follow: Annotated[bool, typer.Option("--follow", "-f", help="keep waiting for new events")] = False,
    limit: Annotated[int, typer.Option(help="stop after N events (0: no limit)", min=0)] = 0,
    last: Annotated[int, typer.Option(help="only the last N events of each partition", min=0)] = 0,
) -> None:
    """Decode and print the events of a topic, as readable lines or JSON."""

    from onceflow.streams.kafka import make_consumer, partition_count, read_topic_to_end, watermarks
    from onceflow.streams.topics.catalog import TopicCatalog

    settings = cli_settings()
    require_broker(settings)
    catalog = TopicCatalog(settings)
    name = catalog.resolve(topic)
    dead_letters = name == catalog["deadletters"].name
    codec = SingleObjectCodec()
    probe = make_consumer(settings, None)
    try:
        parts = partition_count(probe, name)
    except RuntimeError:
        known = ", ".join(t.role for t in catalog)
        raise fail(f"topic {name!r} does not exist; known roles: {known}") from None
    starts: dict[int, int] = {}
    if last:
        for p in range(parts):
            low, high = watermarks(probe, name, p)
            starts[p] = max(low, high - last)
    probe.close()
    shown = 0
    out = sys.stdout
    for msg in read_topic_to_end(settings, name, start_offsets=starts,
                                 follow=follow):
        if msg.value() is None:
            continue  # a tombstone, not an event
        out.write(_render(msg, codec, fmt, dead_letters) + "\n")
        shown += 1
        if limit and shown >= limit:
            break
    out.flush()
    if fmt == "text":
        err_console.print(f"{shown} event(s) from {name}")


# -- demo -----------------------------------------------------------------------------------------


@app.command()
def demo(
    burst: Annotated[int, typer.Option(help="work units to submit", min=1)] = 5_000,
    kind: Annotated[str, typer.Option(help="mixed (80% cpu, 20% llm_pod), cpu or llm_pod")]
    = "mixed",
    llm_provider: Annotated[str, typer.Option("--llm-provider", help="stub or openai")]
    = "stub",
    multi_agent: Annotated[bool, typer.Option("--multi-agent/--single-agent",
                                              help="three node agents, or one")] = True,
    priority: Annotated[str, typer.Option(help="critical, p0, p1 or p2")] = "p2",
    region: Annotated[str | None, typer.Option(help="region the units prefer")] = None,
    simulated_ms: Annotated[int, typer.Option("--simulated-ms", help="cpu work per unit",
                                              min=0)] = 5,
    timeout: Annotated[float, typer.Option(help="seconds to wait for the burst", min=1)] = 300,
    keep: Annotated[bool, typer.Option(help="leave the stack running afterwards")] = False,
    simulate_pressure: Annotated[str, typer.Option(
        "--simulate-pressure", help="none, low, high, critical or auto: waves of work that "
                                    "drive scaling and admission modes")] = "none",
    scenario: Annotated[str, typer.Option(
        help="burst (a burst of units) or sessions (agent sessions steered while they run: "
             "paused and resumed, cancelled, approved, left to a deadline)")] = "burst",
) -> None:
    """The whole path on the local stack: submit a burst, watch it settle, summarise, stop."""
    from onceflow.infra.demo import DemoSpec, run_demo
    from onceflow.infra.demo_sessions import SCENARIOS, run_sessions_demo

    if scenario not in SCENARIOS:
        raise fail(f"--scenario {scenario!r} is not known: use {' or '.join(SCENARIOS)}")
    if scenario == "sessions":
        code = run_sessions_demo(cli_settings(), console, timeout_s=timeout, keep=keep)
        if code:
            raise typer.Exit(code)
        return

    if kind not in ("mixed", *(k for k in KINDS if k != "tool")):
        raise fail(f"--kind {kind!r} is not known: use mixed, cpu or llm_pod")
    if priority not in PRIORITIES:
        raise fail(f"--priority {priority!r} is not known: use {', '.join(PRIORITIES)}")
    _check_provider(llm_provider)
    from onceflow.infra.demo import PRESSURES

    if simulate_pressure not in PRESSURES:
        raise fail(f"--simulate-pressure {simulate_pressure!r} is not known: use "
                    f"{', '.join(PRESSURES)}")
    spec = DemoSpec(burst=burst, kind=kind, llm_provider=llm_provider,
                    agents=3 if multi_agent else 1, priority=priority, region=region,
                    simulated_ms=simulated_ms, timeout_s=timeout, keep=keep,
                    pressure=simulate_pressure)
    from onceflow.infra.broker import BrokerStartError
    from onceflow.infra.roles import RoleStartError

    try:
        code = run_demo(cli_settings(), spec, console)
    except RoleStartError as exc:
        raise fail(f"a role did not start: {exc}", 1) from None
    except BrokerStartError as exc:
        raise fail(str(exc), 1) from None
    if code:
        raise typer.Exit(code)




def main() -> None:
    app()


if __name__ == "__main__":
    main()


@app.command()
def simulate(
    seeds: Annotated[int, typer.Option(help="how many seeds to run", min=1)] = 10_000,
    first: Annotated[int, typer.Option(help="the first seed", min=0)] = 0,
    seed: Annotated[int | None, typer.Option(help="replay this one seed")] = None,
    trace: Annotated[bool, typer.Option(help="with --seed: print every record it appended")]
    = False,
) -> None:
    """The deterministic simulation of the whole pipeline (reducers, simulated log, agents
    and clock, seeded faults), with its invariants checked after every seed.

    It lives with the tests (tests/simulation): run it from a checkout."""
    if (Path.cwd() / "tests" / "simulation").is_dir() and str(Path.cwd()) not in sys.path:
        sys.path.insert(0, str(Path.cwd()))  # a console script does not look in the cwd
    try:
        from tests.simulation.__main__ import main as simulation_main
    except ImportError:
        raise fail("the simulator lives in the repository's tests/simulation: run "
                   "`onceflow simulate` from a checkout of onceflow (or `make simulate "
                   "SEEDS=N` there)") from None
    args = ["--seeds", str(seeds), "--first", str(first)]
    if seed is not None:
        args += ["--seed", str(seed)] + (["--trace"] if trace else [])
    raise typer.Exit(simulation_main(args))
