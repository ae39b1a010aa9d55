"""`onceflow sessions`, `onceflow session show S`, `onceflow why WU`: what the log says about
sessions and units, asked of the read model (the views service's `/v1`)."""

from __future__ import annotations

import json
import time
from typing import Annotated, Any

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

        views = [v for v in read_model(cli_settings(), "/sessions", {"state": state})
                 if tenant is None or v["tenant_id"] == tenant]
        if fmt == "json":
            print(json.dumps(views, indent=2))
            return
        table = Table("tenant", "session", "state", "steps done", "cost (USD)", "started",
                      title=f"sessions ({len(views)})")
        for v in views:
            table.add_row(v["tenant_id"], v["session_id"], v["state"],
                          f"{v['done']}/{v['steps']}", v["cost_usd"],
                          time.strftime("%H:%M:%S", time.localtime(v["started_at"] / 1000)))
        console.print(table)

    session_app = typer.Typer(help="One session: its steps, their DAG, states and cost.",
                              no_args_is_help=True)
    app.add_typer(session_app, name="session")

    @session_app.command("show")
    def show(
        session_id: Annotated[str, typer.Argument(help="the execution_session_id")],
        tenant: Annotated[str, typer.Option(help="the session's tenant")],
        at: Annotated[str | None, typer.Option(
            help="as it was at this logged time (ms since the epoch, or ISO 8601)")] = None,
        fmt: Fmt = "table",
    ) -> None:
        """A session's DAG with each step's state, attempts, node, cost and time spent."""
        from rich.tree import Tree

        at_ms = logged_time(at)
        view = read_model(cli_settings(), f"/sessions/{session_id}",
                          {"owner": tenant, "at": at_ms}, missing_ok=True)
        if view is None:
            raise fail(f"no session {session_id!r} of tenant {tenant!r} in the log"
                       + (f" by {at}" if at is not None else ""), 1)
        if fmt == "json":
            print(json.dumps(view, indent=2))
            return
        steps = {s["work_unit_id"]: s for s in view["dag"]}
        limits = ", ".join(f"{k}={v}" for k, v in view["limits"].items())
        tree = Tree(f"session {tenant}/{session_id}: [bold]{view['state']}[/], "
                    f"{view['cost_usd']} USD" + (f"; limits {limits}" if limits else "")
                    + (f"; [red]{view['at_limit']}[/]" if view["at_limit"] else ""))
        children: dict[str, list[str]] = {}
        for step in steps.values():
            for parent in step["depends_on"]:
                children.setdefault(parent, []).append(step["work_unit_id"])

        def label(wu: str) -> str:
            s = steps[wu]
            spent = f", {s['time_ms'] / 1000:.1f} s" if s["time_ms"] is not None else ""
            return (f"{wu} [{s['kind']}] {s['state']}"
                    + (f" ({s['reason']})" if s["reason"] else "")
                    + f", attempts {s['attempts']}" + (f" on {s['node']}" if s["node"] else "")
                    + f", {s['cost_usd']} USD{spent}")

        def add(node: Any, wu: str, seen: set[str]) -> None:
            branch = node.add(label(wu))
            for child in sorted(children.get(wu, [])):
                if child not in seen:
                    add(branch, child, seen | {child})

        roots = sorted(wu for wu, s in steps.items()
                       if not any(p in steps for p in s["depends_on"]))
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
        settings = ready_settings() if given else cli_settings()
        current = _limits_of(settings, tenant, session_id)
        if current is None and not given:
            raise fail(f"session {session_id!r} of tenant {tenant!r} has no limits in the log; "
                       "give some (--max-steps N, --max-tokens N, ...)", 1)
        if not given:
            _print_limits(tenant, session_id, current, fmt)
            return
        _set_limits(settings, tenant, session_id, current, given, reason, actor, wait, fmt)

    @app.command()
    def unit(
        work_unit_id: Annotated[str, typer.Argument(help="a work unit")],
        at: Annotated[str | None, typer.Option(
            help="as it was at this logged time (ms since the epoch, or ISO 8601)")] = None,
        fmt: Fmt = "table",
    ) -> None:
        """A unit's state, reason, attempts, node, billed cost and result address (now, or
        as the log held them at a logged time)."""
        at_ms = logged_time(at)
        found = read_model(cli_settings(), f"/units/{work_unit_id}", {"at": at_ms},
                           missing_ok=True)
        if found is None:
            raise fail(f"no work unit {work_unit_id!r} in the log"
                       + (f" by {at}" if at is not None else ""), 1)
        if fmt == "json":
            print(json.dumps(found, indent=2))
            return
        console.print(f"{work_unit_id} [{found['kind']}] of {found['tenant_id']}/"
                      f"{found['session_id']}: [bold]{found['state']}[/]"
                      + (f" ({found['reason']})" if found["reason"] else "")
                      + f", attempts {found['attempts']}"
                      + (f" on {found['node']}" if found["node"] else "")
                      + f", {found['cost_usd']} USD"
                      + (f", result {found['result_ref']['sha256'][:12]}"
                         if found["result_ref"] else ""))

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
        from onceflow.schemas import default_registry

        if (work_unit_id is None) == (session is None):
            raise fail("name a work unit, or a session with --session S --tenant T")
        if session is not None and tenant is None:
            raise fail(f"--session {session} needs its --tenant")
        settings = cli_settings()
        if work_unit_id is not None:
            found = read_model(settings, f"/units/{work_unit_id}/facts", missing_ok=True)
            missing = f"no work unit {work_unit_id!r} in the log"
        else:
            found = read_model(settings, f"/sessions/{session}/facts", {"owner": tenant},
                               missing_ok=True)
            missing = f"no session {session!r} of tenant {tenant!r} in the log"
        if not found:
            raise fail(missing, 1)
        if fmt == "json":
            print(json.dumps(found, indent=2))
            return
        registry = default_registry()
        for data in found:
            model = registry.for_type(data["event_type"]).model
            e = model.model_validate(data) if model is not None else None
            if e is None:
                continue
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

        from onceflow.infra.sessions import SESSION_ENDED

        if session is not None and tenant is None:
            raise fail(f"watching session {session} needs its --tenant")
        settings = cli_settings()

        def render() -> tuple[Table, bool]:
            if session is not None:
                view = read_model(settings, f"/sessions/{session}", {"owner": tenant},
                                  missing_ok=True)
                table = Table("step", "kind", "state", "attempts", "node", "cost (USD)",
                              title=f"session {tenant}/{session}: "
                                    f"{view['state'] if view else 'not in the log yet'}"
                                    + (f", {view['cost_usd']} USD" if view else ""))
                for step in (view["dag"] if view else []):
                    table.add_row(step["work_unit_id"], step["kind"],
                                  step["state"] + (f" ({step['reason']})" if step["reason"]
                                                   else ""),
                                  str(step["attempts"]), step["node"] or "-", step["cost_usd"])
                return table, view is not None and view["state"] in SESSION_ENDED
            views = read_model(settings, "/sessions")
            table = Table("tenant", "session", "state", "steps done", "cost (USD)",
                          title=f"sessions ({len(views)})")
            for v in sorted(views, key=lambda v: (v["tenant_id"], v["session_id"])):
                table.add_row(v["tenant_id"], v["session_id"], v["state"],
                              f"{v['done']}/{v['steps']}", v["cost_usd"])
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
    from onceflow.schemas import SessionLimits

    found = read_model(settings, f"/sessions/{session_id}/limits", {"owner": tenant},
                       missing_ok=True)
    return None if found is None else SessionLimits.model_validate(found)


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
    from onceflow.schemas import SessionLimits, SessionLimitsChanged, SessionLimitsSet

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
    changed = read_model(settings, f"/limit-changes/{event.event_id}", {"timeout_s": wait},
                         missing_ok=True)
    if changed is None:
        raise fail(f"limits sent (event {event.event_id}) but the limiter has not taken "
                   f"them within {wait:g} s: is the limiter running?", 1)
    taken = SessionLimitsChanged.model_validate(changed)
    note = "the session was parked at a limit and resumes" if taken.resumed else "taken"
    _print_limits(tenant, session_id, taken.session_limits, fmt, note)
