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
        work_unit_id: Annotated[str | None, typer.Argument(help="a work unit")] = None,
        session: Annotated[str | None, typer.Option(
            help="every decision about a session's units instead (with --tenant)")] = None,
        tenant: Annotated[str | None, typer.Option(help="the session's tenant")] = None,
        fmt: Fmt = "table",
    ) -> None:
        """Every decision about a unit (or a session), in the order the log has them:
        placements with their candidates, deferrals, retries, leases, controls, operator
        resolutions."""
        from onceflow.schemas import ControlApplied

        if (work_unit_id is None) == (session is None):
            raise fail("name a work unit, or a session with --session S --tenant T")
        if session is not None and tenant is None:
            raise fail(f"--session {session} needs its --tenant")
        facts, _ = _read(ready_settings(), ledger=False)
        if work_unit_id is not None:
            mine = [e for e in facts if e.work_unit_id == work_unit_id]
            missing = f"no work unit {work_unit_id!r} in the log"
        else:
            units = {e.work_unit_id for e in facts if e.event_type == "workunit.submitted"
                     and e.tenant_id == tenant and e.execution_session_id == session}
            target = f"session:{tenant}/{session}"
            mine = [e for e in facts if (e.work_unit_id in units and e.work_unit_id)
                    or (isinstance(e, ControlApplied) and e.target == target)]
            missing = f"no session {session!r} of tenant {tenant!r} in the log"
        if not mine:
            raise fail(missing, 1)
        if fmt == "json":
            print(json.dumps([e.model_dump(mode="json") for e in mine], indent=2))
            return
        for e in mine:
            stamp = time.strftime("%H:%M:%S", time.localtime(e.occurred_at / 1000))
            who = f"{e.work_unit_id}  " if session is not None and e.work_unit_id else ""
            console.print(f"{stamp}.{e.occurred_at % 1000:03d}  {who}{describe(e)}",
                          markup=False)

    @app.command()
    def watch(
        session: Annotated[str | None, typer.Argument(help="a session (none: the stack)")]
        = None,
        tenant: Annotated[str | None, typer.Option(help="the session's tenant")] = None,
        interval: Annotated[float, typer.Option(help="seconds between refreshes")] = 1.0,
    ) -> None:
        """A live view of a session (its steps changing state, cost, waits), refreshed in
        place until it ends; without a session, every session of the stack (Ctrl-C ends)."""
        from rich.live import Live
        from rich.table import Table

        from onceflow.infra.sessions import fold_sessions

        if session is not None and tenant is None:
            raise fail(f"watching session {session} needs its --tenant")
        settings = ready_settings()

        def render() -> tuple[Table, bool]:
            facts, items = _read(settings)
            views = fold_sessions(facts, items)
            if session is not None:
                view = views.get((tenant or "", session))
                table = Table("step", "kind", "state", "attempts", "node", "cost (USD)",
                              title=f"session {tenant}/{session}: "
                                    f"{view.state if view else 'not in the log yet'}"
                                    + (f", {view.cost_usd:f} USD" if view else ""))
                for step in (view.steps.values() if view else []):
                    table.add_row(step.work_unit_id, step.kind,
                                  step.state + (f" ({step.reason})" if step.reason else ""),
                                  str(step.attempts), step.node or "-", f"{step.cost_usd:f}")
                ended = view is not None and view.state in ("completed", "failed",
                                                            "cancelled")
                return table, ended
            table = Table("tenant", "session", "state", "steps done", "cost (USD)",
                          title=f"sessions ({len(views)})")
            for v in sorted(views.values(), key=lambda v: (v.tenant_id, v.session_id)):
                d = v.as_json()
                table.add_row(v.tenant_id, v.session_id, v.state, f"{d['done']}/{d['steps']}",
                              d["cost_usd"])
            return table, False

        table, ended = render()
        with Live(table, console=console, refresh_per_second=4) as live:
            try:
                while not ended:
                    time.sleep(interval)  # a view's refresh period, not synchronisation
                    table, ended = render()
                    live.update(table)
            except KeyboardInterrupt:
                pass
