"""`onceflow sessions`, `onceflow session show S`, `onceflow why WU`: what the log says about
sessions and units, read from the scheduler's facts and the ledger."""

from __future__ import annotations

import json
import time
from typing import Annotated, Any

import typer

from onceflow.infra.cli.common import OutputFormat, console, fail, ready_settings

__all__ = ["describe", "register"]

Fmt = Annotated[OutputFormat, typer.Option("--format", help="table or json")]


def _read(settings: Any, ledger: bool = True) -> tuple[list[Any], list[Any]]:
    from onceflow.schemas import LedgerLineItem, SingleObjectCodec
    from onceflow.streams.kafka import read_events
    from onceflow.streams.topics.catalog import TopicCatalog

    catalog = TopicCatalog(settings)
    facts = [e for _, e in read_events(settings, catalog["workunits"].name, SingleObjectCodec())]
    items = [] if not ledger else [
        e for _, e in read_events(settings, catalog["ledger"].name, SingleObjectCodec(),
                                  event_types=frozenset({"ledger.line_item"}))
        if isinstance(e, LedgerLineItem)]
    return facts, items


def describe(e: Any) -> str:
    """One line saying what a fact decided, with the numbers it recorded."""
    kind = e.event_type
    fields: list[str] = []
    for name in ("reason_code", "selected_node_id", "attempt_index", "score",
                 "eligible_node_count", "delay_ms", "retry_at", "error_code", "error_reason",
                 "settlement_reason", "accepted", "action", "scope", "requested_by",
                 "outcome", "detail", "reason", "resolution", "operator", "node_id"):
        value = getattr(e, name, None)
        if value in (None, "", 0, [], {}) and name != "accepted":
            continue
        if name == "accepted" and kind != "workunit.completed":
            continue
        fields.append(f"{name}={value}")
    candidates = getattr(e, "candidates", None)
    if candidates:
        fields.append("candidates=" + ", ".join(f"{c.node_id}:{c.score:.2f}"
                                                for c in candidates[:4]))
    counts = getattr(e, "filter_counts", None)
    if counts:
        fields.append("filtered=" + ", ".join(f"{k}={v}" for k, v in sorted(counts.items())))
    return f"{kind:<28} " + "  ".join(fields)


def register(app: typer.Typer) -> None:
    @app.command()
    def sessions(
        tenant: Annotated[str | None, typer.Option(help="only this tenant's")] = None,
        state: Annotated[str | None, typer.Option(
            help="only sessions in this state (running, paused, waiting, cancelling, "
                 "cancelled, completed, failed)")] = None,
        fmt: Fmt = "table",
    ) -> None:
        """Sessions with their state, steps done and cost so far."""
        from rich.table import Table

        from onceflow.infra.sessions import fold_sessions

        facts, items = _read(ready_settings())
        views = [v for v in fold_sessions(facts, items).values()
                 if (tenant is None or v.tenant_id == tenant)
                 and (state is None or v.state == state)]
        views.sort(key=lambda v: (v.started_at, v.tenant_id, v.session_id))
        if fmt == "json":
            print(json.dumps([v.as_json() for v in views], indent=2))
            return
        table = Table("tenant", "session", "state", "steps done", "cost (USD)", "started",
                      title=f"sessions ({len(views)})")
        for v in views:
            d = v.as_json()
            table.add_row(v.tenant_id, v.session_id, v.state, f"{d['done']}/{d['steps']}",
                          d["cost_usd"], time.strftime("%H:%M:%S",
                                                       time.localtime(v.started_at / 1000)))
        console.print(table)

    session_app = typer.Typer(help="One session: its steps, their DAG, states and cost.",
                              no_args_is_help=True)
    app.add_typer(session_app, name="session")

    @session_app.command("show")
    def show(
        session_id: Annotated[str, typer.Argument(help="the execution_session_id")],
        tenant: Annotated[str, typer.Option(help="the session's tenant")],
        at: Annotated[int | None, typer.Option(
            help="as it was at this logged time (ms since the epoch)")] = None,
        fmt: Fmt = "table",
    ) -> None:
        """A session's DAG with each step's state, attempts, node, cost and time spent."""
        from rich.tree import Tree

        from onceflow.infra.sessions import fold_sessions

        facts, items = _read(ready_settings())
        view = fold_sessions(facts, items, at=at).get((tenant, session_id))
        if view is None:
            raise fail(f"no session {session_id!r} of tenant {tenant!r} in the log"
                       + (f" by {at}" if at is not None else ""), 1)
        if fmt == "json":
            print(json.dumps({**view.as_json(),
                              "dag": [s.as_json() for s in view.steps.values()]}, indent=2))
            return
        tree = Tree(f"session {tenant}/{session_id}: [bold]{view.state}[/], "
                    f"{view.cost_usd:f} USD")
        children: dict[str, list[str]] = {}
        for step in view.steps.values():
            for parent in step.depends_on:
                children.setdefault(parent, []).append(step.work_unit_id)

        def label(wu: str) -> str:
            s = view.steps[wu]
            spent = f", {(s.finished_at - s.submitted_at) / 1000:.1f} s" if s.finished_at else ""
            return (f"{wu} [{s.kind}] {s.state}" + (f" ({s.reason})" if s.reason else "")
                    + f", attempts {s.attempts}" + (f" on {s.node}" if s.node else "")
                    + f", {s.cost_usd:f} USD{spent}")

        def add(node: Any, wu: str, seen: set[str]) -> None:
            branch = node.add(label(wu))
            for child in sorted(children.get(wu, [])):
                if child not in seen:
                    add(branch, child, seen | {child})

        roots = sorted(wu for wu, s in view.steps.items()
                       if not any(p in view.steps for p in s.depends_on))
        for wu in roots:
            add(tree, wu, {wu})
        console.print(tree)

    @app.command()
    def why(
        work_unit_id: Annotated[str, typer.Argument(help="a work unit")],
        fmt: Fmt = "table",
    ) -> None:
        """Every decision about a unit, in the order the log has them: placements with
        their candidates, deferrals, retries, leases, controls, operator resolutions."""
        facts, _ = _read(ready_settings(), ledger=False)
        mine = [e for e in facts if e.work_unit_id == work_unit_id]
        if not mine:
            raise fail(f"no work unit {work_unit_id!r} in the log", 1)
        if fmt == "json":
            print(json.dumps([e.model_dump(mode="json") for e in mine], indent=2))
            return
        for e in mine:
            stamp = time.strftime("%H:%M:%S", time.localtime(e.occurred_at / 1000))
            console.print(f"{stamp}.{e.occurred_at % 1000:03d}  {describe(e)}", markup=False)
