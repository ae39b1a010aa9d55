"""`onceflow sessions`, `onceflow session show S`, `onceflow why WU`: what the log says about
sessions and units, read from the scheduler's facts and the ledger."""

from __future__ import annotations

import json
import time
from typing import Annotated, Any

import typer

from onceflow.infra.cli.common import OutputFormat, console, fail, ready_settings
from onceflow.infra.sessions import read_log

__all__ = ["describe", "register"]

Fmt = Annotated[OutputFormat, typer.Option("--format", help="table or json")]


def describe(e: Any) -> str:
    """One line saying what a fact decided, with the numbers it recorded."""
    kind = e.event_type
    fields: list[str] = []
    for name in ("reason_code", "selected_node_id", "attempt_index", "score",
                 "eligible_node_count", "delay_ms", "retry_at", "error_code", "error_reason",
                 "settlement_reason", "accepted", "action", "scope", "requested_by",
                 "outcome", "detail", "reason", "resolution", "operator", "node_id", "limit", "threshold", "used",
                 "maximum"):
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

        facts, items = read_log(ready_settings())
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

        facts, items = read_log(ready_settings())
        view = fold_sessions(facts, items, at=at).get((tenant, session_id))
        if view is None:
            raise fail(f"no session {session_id!r} of tenant {tenant!r} in the log"
                       + (f" by {at}" if at is not None else ""), 1)
        if fmt == "json":
            print(json.dumps({**view.as_json(),
                              "dag": [s.as_json() for s in view.steps.values()]}, indent=2))
            return
        limits = ", ".join(f"{k}={v}" for k, v in view.limits.items())
        tree = Tree(f"session {tenant}/{session_id}: [bold]{view.state}[/], "
                    f"{view.cost_usd:f} USD" + (f"; limits {limits}" if limits else "")
                    + (f"; [red]{view.at_limit}[/]" if view.at_limit else ""))
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

    @session_app.command("limits")
    def limits(
        session_id: Annotated[str, typer.Argument(help="the execution_session_id")],
        tenant: Annotated[str, typer.Option(help="the session's tenant")],
        max_steps: Annotated[int | None, typer.Option(min=1)] = None,
        max_attempts: Annotated[int | None, typer.Option(min=1)] = None,
        max_llm_calls: Annotated[int | None, typer.Option(min=1)] = None,
        max_tokens: Annotated[int | None, typer.Option(min=1)] = None,
        max_cost_usd: Annotated[str | None, typer.Option(help="USD, e.g. 2.50")] = None,
        max_wall_time_ms: Annotated[int | None, typer.Option(min=1)] = None,
        on_limit: Annotated[str | None, typer.Option(help="park or cancel")] = None,
        reason: Annotated[str, typer.Option(help="why, for the record")] = "",
        actor: Annotated[str | None, typer.Option(help="who asks (default: your user "
                                                       "name)")] = None,
        wait: Annotated[float, typer.Option(help="seconds to wait for the outcome")] = 10.0,
        fmt: Fmt = "table",
    ) -> None:
        """Show a session's execution limits, or change the ones given (the others stay): a
        session parked at a limit that the new limits leave room for is resumed."""
        given = {k: v for k, v in (
            ("max_steps", max_steps), ("max_attempts", max_attempts),
            ("max_llm_calls", max_llm_calls), ("max_tokens", max_tokens),
            ("max_cost_usd", max_cost_usd), ("max_wall_time_ms", max_wall_time_ms),
            ("on_limit", on_limit)) if v is not None}
        settings = ready_settings()
        current = _limits_of(settings, tenant, session_id)
        if current is None and not given:
            raise fail(f"session {session_id!r} of tenant {tenant!r} has no limits in the log; "
                       "give some (--max-steps N, --max-tokens N, ...)", 1)
        if not given:
            _print_limits(tenant, session_id, current, fmt)
            return
        _set_limits(settings, tenant, session_id, current, given, reason, actor, wait, fmt)

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
        resolutions, then the limiter's word on its limits (warnings, a limit reached, new
        limits)."""
        from onceflow.schemas import ControlApplied, Scope, SessionLimitsChanged

        if (work_unit_id is None) == (session is None):
            raise fail("name a work unit, or a session with --session S --tenant T")
        if session is not None and tenant is None:
            raise fail(f"--session {session} needs its --tenant")
        facts, _ = read_log(ready_settings(), ledger=False)
        if work_unit_id is not None:
            mine = [e for e in facts if e.work_unit_id == work_unit_id]
            missing = f"no work unit {work_unit_id!r} in the log"
        else:
            units = {e.work_unit_id for e in facts if e.event_type == "workunit.submitted"
                     and e.tenant_id == tenant and e.execution_session_id == session}
            target = str(Scope.of_session(tenant or "", session or ""))
            mine = [e for e in facts if (e.work_unit_id in units and e.work_unit_id)
                    or (isinstance(e, ControlApplied) and e.target == target)
                    or (isinstance(e, SessionLimitsChanged)
                        and (e.tenant_id, e.execution_session_id) == (tenant, session))]
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

        from onceflow.infra.sessions import SESSION_ENDED, fold_sessions

        if session is not None and tenant is None:
            raise fail(f"watching session {session} needs its --tenant")
        settings = ready_settings()

        def render() -> tuple[Table, bool]:
            facts, items = read_log(settings)
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
                ended = view is not None and view.state in SESSION_ENDED
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


def _limits_of(settings: Any, tenant: str, session_id: str) -> Any:
    """A session's limits as the log has them: the last an operator set, else its first
    submission's (None: it has none)."""
    from onceflow.schemas import SessionLimitsChanged, SingleObjectCodec, WorkUnitSubmitted
    from onceflow.streams.kafka import read_events
    from onceflow.streams.topics.catalog import TopicCatalog

    catalog = TopicCatalog(settings)
    found = None
    for _, e in read_events(settings, catalog["flow"].name, SingleObjectCodec(),
                            event_types=frozenset({"flow.session.limits.changed"})):
        if isinstance(e, SessionLimitsChanged) and (e.tenant_id, e.execution_session_id) == (
                tenant, session_id):
            found = e.session_limits
    if found is not None:
        return found
    for _, e in read_events(settings, catalog["workunits"].name, SingleObjectCodec(),
                            event_types=frozenset({"workunit.submitted"})):
        if isinstance(e, WorkUnitSubmitted) and e.session_limits is not None and (
                e.tenant_id, e.execution_session_id) == (tenant, session_id):
            return e.session_limits
    return None


def _print_limits(tenant: str, session_id: str, limits: Any, fmt: OutputFormat,
                  note: str = "") -> None:
    shown = limits.model_dump(mode="json", exclude_none=True)
    if fmt == "json":
        print(json.dumps({"tenant_id": tenant, "session_id": session_id, "limits": shown,
                          **({"outcome": note} if note else {})}, indent=2))
        return
    text = ", ".join(f"{k}={v}" for k, v in shown.items())
    console.print(f"limits of {tenant}/{session_id}: {text}" + (f"; {note}" if note else ""))


def _set_limits(settings: Any, tenant: str, session_id: str, current: Any,
                given: dict[str, Any], reason: str, actor: str | None, wait: float,
                fmt: OutputFormat) -> None:
    import uuid

    from pydantic import ValidationError

    from onceflow.infra.cli.control import actor_of, send_control
    from onceflow.schemas import (
        SessionLimits,
        SessionLimitsChanged,
        SessionLimitsSet,
        SingleObjectCodec,
    )
    from onceflow.streams.kafka import read_events
    from onceflow.streams.topics.catalog import TopicCatalog

    base = current.model_dump() if current is not None else {}
    try:
        limits = SessionLimits.model_validate({**base, **given})
    except ValidationError as exc:
        problems = "; ".join(f"--{'-'.join(str(p) for p in e['loc'])}: {e['msg']}"
                             .replace("_", "-") for e in exc.errors())
        raise fail(f"bad limits: {problems}") from None
    event = SessionLimitsSet(
        event_id=uuid.uuid4().hex, occurred_at=int(time.time() * 1000), tenant_id=tenant,
        execution_session_id=session_id, session_limits=limits, requested_by=actor_of(actor),
        reason=reason)
    send_control(settings, event, "limits")
    deadline = time.monotonic() + wait
    topic = TopicCatalog(settings)["flow"].name
    while True:
        for _, e in read_events(settings, topic, SingleObjectCodec(),
                                event_types=frozenset({"flow.session.limits.changed"})):
            if isinstance(e, SessionLimitsChanged) and e.causation_id == event.event_id:
                note = "the session was parked at a limit and resumes" if e.resumed else \
                    "taken"
                _print_limits(tenant, session_id, e.session_limits, fmt, note)
                return
        if time.monotonic() >= deadline:
            raise fail(f"limits sent (event {event.event_id}) but the limiter has not taken "
                       f"them within {wait:g} s: is the limiter running?", 1)
        time.sleep(0.2)
