"""`onceflow pause | resume | cancel`: steer work in flight, as commands on the log.

Each sends one `control.requested` (with who asks and why) and waits for the
scheduler partitions' `control.applied` records, then says what came of it.
"""

from __future__ import annotations

import getpass
import json
import time
import uuid
from pathlib import Path
from typing import Annotated, Any

import typer

from onceflow.infra.cli.common import (
    OutputFormat,
    cli_settings,
    console,
    fail,
    reading,
    require_broker,
)
from onceflow.infra.steering import (
    SteeringError,
    prepare_answer,
    read_inbox,
    send_command,
    wait_applied,
)
from onceflow.schemas import (
    CONTROL_NOT_TAKEN,
    ControlAction,
    ControlRequested,
    ControlScope,
    Event,
    Scope,
)
from onceflow.streams.topics import TopicRole

__all__ = ["actor_of", "register", "send_control"]


def actor_of(actor: str | None) -> str:
    """Who asks: as given, or the user running the command."""
    return actor or getpass.getuser() or "operator"


def send_control(settings: Any, event: Event, topic: TopicRole = "control") -> None:
    """An operator's command onto the log (`steering.send_command`), or a one-line error."""
    try:
        send_command(settings, event, topic)
    except SteeringError as exc:
        raise fail(str(exc), 1) from None


def _target(unit: str | None, session: str | None, tenant: str | None, queue: bool
            ) -> tuple[ControlScope, dict[str, Any]]:
    """The scope and envelope of a control from the options, or an error saying which to give."""
    given = sum(x is not None for x in (unit, session)) + int(queue)
    if given > 1 or (queue and tenant is not None):
        raise fail("name one target: --unit WU, --session S --tenant T, --tenant T, or --queue")
    if unit is not None:
        return "unit", {"work_unit_id": unit, **({"tenant_id": tenant} if tenant else {})}
    if session is not None:
        if tenant is None:
            raise fail(f"--session {session} needs its --tenant (a session id is unique within "
                       "its tenant)")
        return "session", {"tenant_id": tenant, "execution_session_id": session}
    if tenant is not None:
        return "tenant", {"tenant_id": tenant}
    if queue:
        return "queue", {}
    raise fail("name what to act on: --unit WU, --session S --tenant T, --tenant T, or --queue")


def _control(action: ControlAction, unit: str | None, session: str | None, tenant: str | None,
             queue: bool, reason: str, actor: str | None, wait: float, fmt: OutputFormat
             ) -> None:
    from onceflow.streams.topics.catalog import TopicCatalog

    scope, envelope = _target(unit, session, tenant, queue)
    settings = cli_settings()
    require_broker(settings)
    catalog = TopicCatalog(settings)
    command = ControlRequested(
        event_id=uuid.uuid4().hex, occurred_at=int(time.time() * 1000), action=action,
        scope=scope, requested_by=actor_of(actor), reason=reason,
        **envelope)
    send_control(settings, command)
    expected = 1 if scope == "unit" else catalog["reports"].partitions
    with reading():
        records = wait_applied(settings, command.event_id, expected, wait) if wait > 0 else []
    if fmt == "json":
        print(json.dumps({"control_id": command.event_id, "action": action, "scope": scope,
                          "records": [r.model_dump(mode="json") for r in records]}, indent=2))
    name = {"unit": unit, "tenant": tenant,
            "session": Scope.of_session(tenant or "", session or "").session_key}.get(scope)
    what = f"{action} {scope}" + (f" {name}" if name else "")
    if not records:
        if fmt != "json":
            console.print(f"{what}: sent (control {command.event_id}); no scheduler has "
                          "applied it yet (is `onceflow up` running?)")
        return
    refused = [r for r in records if r.outcome in CONTROL_NOT_TAKEN]
    if refused:
        raise fail(f"{what} refused: {refused[0].detail}", 1)
    if all(r.outcome == "none_here" for r in records) and action != "pause":
        raise fail(f"{what}: no unit of {records[0].target} that is not done (unknown, or "
                   "everything in it has ended)", 1)
    if fmt != "json" and action in ("approve", "deny"):
        console.print(f"{records[0].detail} (control {command.event_id})")
    elif fmt != "json":
        cancelled = sum(r.cancelled for r in records)
        stopping = sum(r.stopping for r in records)
        resumed = sum(r.resumed for r in records)
        counts = {"pause": "", "resume": f": {resumed} paused unit(s) placed again",
                  "cancel": f": {cancelled} queued unit(s) cancelled, {stopping} running "
                            "unit(s) stopping"}[action]
        console.print(f"{records[0].target} {action}d by {command.requested_by}{counts} "
                      f"(control {command.event_id})")


Unit = Annotated[str | None, typer.Option("--unit", help="one work unit")]
Session = Annotated[str | None, typer.Option("--session", help="a session (with --tenant)")]
Tenant = Annotated[str | None, typer.Option("--tenant", help="a tenant, or the session's")]
Queue = Annotated[bool, typer.Option("--queue", help="everything")]
Reason = Annotated[str, typer.Option(help="why, for the record")]
Actor = Annotated[str | None, typer.Option(help="who asks (default: your user name)")]
Wait = Annotated[float, typer.Option(help="seconds to wait for the outcome (0: do not)")]
Fmt = Annotated[OutputFormat, typer.Option("--format", help="table or json")]


def _answer(session_id: str, step: str, tenant: str, file: Path, actor: str | None,
            wait: float, fmt: OutputFormat) -> None:
    if not file.is_file():
        raise fail(f"{file} does not exist; pass the file that holds the answer")
    settings = cli_settings()
    require_broker(settings)
    try:
        with reading():
            answer = prepare_answer(settings, session_id, step, tenant, file.read_bytes(),
                                    actor_of(actor))
    except SteeringError as exc:
        raise fail(str(exc), 1) from None
    event = answer.event
    send_control(settings, event)
    with reading():
        records = wait_applied(settings, event.event_id, 1, wait) if wait > 0 else []
    if answer.problem:
        raise fail(f"{file} does not fit the step's schema: {answer.problem} (the refusal is "
                   f"recorded as control {event.event_id}; the step still waits for an answer)")
    if fmt == "json":
        print(json.dumps({"control_id": event.event_id,
                          "answer_ref": event.input_ref.model_dump() if event.input_ref else None,
                          "records": [r.model_dump(mode="json") for r in records]}, indent=2))
    if records and records[0].outcome in CONTROL_NOT_TAKEN:
        raise fail(f"answer refused: {records[0].detail}", 1)
    if fmt != "json":
        console.print(records[0].detail if records else
                      f"answer sent (control {event.event_id}); not applied yet")


def register(app: typer.Typer) -> None:
    @app.command()
    def approve(work_unit_id: Annotated[str, typer.Argument(help="a unit waiting for approval")],
                reason: Reason = "", actor: Actor = None, wait: Wait = 10.0,
                fmt: Fmt = "table") -> None:
        """Approve a unit that waits for one: it is placed and runs."""
        _control("approve", work_unit_id, None, None, False, reason, actor, wait, fmt)

    @app.command()
    def deny(work_unit_id: Annotated[str, typer.Argument(help="a unit waiting for approval")],
             reason: Annotated[str, typer.Option(help="why (required: it is recorded)")],
             actor: Actor = None, wait: Wait = 10.0, fmt: Fmt = "table") -> None:
        """Deny a unit that waits for an approval: it fails closed, nothing applied."""
        _control("deny", work_unit_id, None, None, False, reason, actor, wait, fmt)

    @app.command("input")
    def answer(
        session_id: Annotated[str, typer.Argument(help="the session")],
        step: Annotated[str, typer.Argument(help="its input step (a work unit id)")],
        tenant: Annotated[str, typer.Option(help="the session's tenant")],
        file: Annotated[Path, typer.Option("--file", help="the answer (JSON when the step "
                                                          "declares a schema)")],
        actor: Actor = None, wait: Wait = 10.0, fmt: Fmt = "table",
    ) -> None:
        """Answer an input step: the answer goes to the content store and becomes the step's
        result, handed to the steps that depend on it."""
        _answer(session_id, step, tenant, file, actor, wait, fmt)

    @app.command()
    def inbox(tenant: Annotated[str | None, typer.Option(help="only this tenant's")] = None,
              fmt: Fmt = "table") -> None:
        """Everything waiting for a person, oldest first: parked units, approvals, input steps
        and sessions parked at a limit."""
        from rich.table import Table

        with reading():
            items = read_inbox(cli_settings(), tenant)
        if fmt == "json":
            print(json.dumps(items, indent=2))
            return
        if not items:
            console.print("the inbox is empty: nothing waits for a person")
            return
        table = Table("since", "tenant", "session", "unit", "waits for", "until", "why",
                      "resolve with", title=f"inbox ({len(items)})")
        for w in items:
            since = time.strftime("%H:%M:%S", time.localtime(w["since"] / 1000))
            until = ("-" if w["deadline"] is None
                     else time.strftime("%H:%M:%S", time.localtime(w["deadline"] / 1000)))
            table.add_row(since, w["tenant_id"], w["session_id"], w["work_unit_id"],
                          {"needs_operator": "an operator", "approval": "approval",
                           "input": "an answer", "session_limit": "a raised limit"}[w["kind"]],
                          until, w["reason"][:60], w["resolve"])
        console.print(table)

    @app.command()
    def pause(unit: Unit = None, session: Session = None, tenant: Tenant = None,
              queue: Queue = False, reason: Reason = "", actor: Actor = None,
              wait: Wait = 10.0, fmt: Fmt = "table") -> None:
        """Pause a unit, a session, a tenant or the queue: nothing new in it is granted;
        running attempts finish."""
        _control("pause", unit, session, tenant, queue, reason, actor, wait, fmt)

    @app.command()
    def resume(unit: Unit = None, session: Session = None, tenant: Tenant = None,
               queue: Queue = False, reason: Reason = "", actor: Actor = None,
               wait: Wait = 10.0, fmt: Fmt = "table") -> None:
        """Resume what a pause holds: its units are placed again."""
        _control("resume", unit, session, tenant, queue, reason, actor, wait, fmt)

    @app.command()
    def cancel(unit: Unit = None, session: Session = None, tenant: Tenant = None,
               queue: Queue = False, reason: Reason = "", actor: Actor = None,
               wait: Wait = 10.0, fmt: Fmt = "table") -> None:
        """Cancel a unit, a session, a tenant's work or the queue: queued units at once,
        running ones stopped on their nodes; nothing reported afterwards is accepted."""
        _control("cancel", unit, session, tenant, queue, reason, actor, wait, fmt)
