"""Steering work in flight from a program: operators' commands onto the log, the scheduler
partitions' records of them, and what waits for a person.

Shared by the CLI (`onceflow pause`, `approve`, `inbox`, ...) and the Python client
(`onceflow.Client`); neither prints nor exits here, each says it its own way.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass
from typing import Any

from onceflow.schemas import CONTROL_NOT_TAKEN, ControlApplied, ControlHumanInputSubmitted, Event
from onceflow.streams.topics import TopicRole

__all__ = ["Answer", "SteeringError", "prepare_answer", "read_inbox", "send_command",
           "wait_applied"]


class SteeringError(RuntimeError):
    """A command could not be put on the log (the broker refused or is away)."""


def send_command(settings: Any, event: Event, topic: TopicRole = "control") -> None:
    """An operator's command onto the control topic (or the limiter's, for a session's
    limits), delivered before this returns."""
    from onceflow.schemas import SingleObjectCodec
    from onceflow.streams.kafka import DeliveryError, EventProducer
    from onceflow.streams.topics.catalog import TopicCatalog

    producer = EventProducer(settings, SingleObjectCodec())
    producer.send(TopicCatalog(settings)[topic], event)
    try:
        producer.flush()
    except DeliveryError as exc:
        raise SteeringError(str(exc)) from None


def wait_applied(settings: Any, control_id: str, expected: int, timeout: float
                 ) -> list[ControlApplied]:
    """The partitions' records of a control, once all `expected` are in (or at the timeout)."""
    from onceflow.schemas import SingleObjectCodec
    from onceflow.streams.kafka import read_events
    from onceflow.streams.topics.catalog import TopicCatalog

    topic = TopicCatalog(settings)["workunits"].name
    deadline = time.monotonic() + timeout
    found: dict[str, ControlApplied] = {}
    while True:
        for _, event in read_events(settings, topic, SingleObjectCodec(),
                                    event_types=frozenset({"control.applied"})):
            if isinstance(event, ControlApplied) and event.control_id == control_id:
                found[event.event_id] = event
        if len(found) >= expected or time.monotonic() >= deadline:
            return sorted(found.values(), key=lambda a: a.partition)
        time.sleep(0.2)


def read_inbox(settings: Any, tenant: str | None = None) -> list[dict[str, Any]]:
    """Everything waiting for a person, oldest first: units parked in needs_operator and
    units waiting for an approval, each with what it waits for and until when."""
    from onceflow.schemas import (
        SingleObjectCodec,
        WorkUnitDeferred,
        WorkUnitNeedsOperator,
    )
    from onceflow.streams.kafka import read_events
    from onceflow.streams.topics.catalog import TopicCatalog

    waiting: dict[str, dict[str, Any]] = {}
    moves_on = {"workunit.scheduled", "workunit.completed", "workunit.failed",
                "workunit.cancelled", "workunit.retry.scheduled", "workunit.needs_operator",
                "workunit.deferred"}
    for _, event in read_events(settings, TopicCatalog(settings)["workunits"].name,
                                SingleObjectCodec(), event_types=frozenset(moves_on)):
        wu = event.work_unit_id or ""
        if isinstance(event, WorkUnitNeedsOperator):
            waiting[wu] = {
                "kind": "needs_operator", "work_unit_id": wu, "tenant_id": event.tenant_id,
                "session_id": event.execution_session_id, "since": event.occurred_at,
                "attempt": event.attempt_index, "node_id": event.selected_node_id,
                "effect": event.effect, "reason": event.reason or event.reason_code,
                "deadline": None,
                "resolve": f"onceflow resolve {wu} --action retry|mark_done|abandon"}
        elif isinstance(event, WorkUnitDeferred) and event.reason_code == "awaiting_input":
            waiting[wu] = {
                "kind": "input", "work_unit_id": wu, "tenant_id": event.tenant_id,
                "session_id": event.execution_session_id, "since": event.occurred_at,
                "attempt": 0, "node_id": "", "effect": "", "reason": event.reason,
                "deadline": event.retry_at,
                "resolve": f"onceflow input {event.execution_session_id} {wu} --tenant "
                           f"{event.tenant_id} --file answer.json"}
        elif isinstance(event, WorkUnitDeferred) and event.reason_code == "awaiting_approval":
            waiting[wu] = {
                "kind": "approval", "work_unit_id": wu, "tenant_id": event.tenant_id,
                "session_id": event.execution_session_id, "since": event.occurred_at,
                "attempt": 0, "node_id": "", "effect": "", "reason": event.reason,
                "deadline": event.retry_at,
                "resolve": f"onceflow approve {wu} | onceflow deny {wu} --reason ..."}
        elif isinstance(event, WorkUnitDeferred):
            waiting.pop(wu, None)  # approved, now waiting for capacity or a resume
        elif event.event_type == "workunit.completed" and not getattr(event, "accepted", True):
            continue  # a refused result leaves the unit where it was
        else:
            waiting.pop(wu, None)
    for key, item in _sessions_at_a_limit(settings).items():
        waiting[key] = item
    items = [w for w in waiting.values() if tenant is None or w["tenant_id"] == tenant]
    return sorted(items, key=lambda w: (w["since"], w["work_unit_id"]))


def _sessions_at_a_limit(settings: Any) -> dict[str, dict[str, Any]]:
    """Sessions parked at one of their limits: reached, and neither raised nor cancelled."""
    from onceflow.schemas import (
        ControlApplied,
        Scope,
        SessionLimitCrossed,
        SessionLimitsChanged,
        SingleObjectCodec,
    )
    from onceflow.streams.kafka import read_events
    from onceflow.streams.topics.catalog import TopicCatalog

    catalog = TopicCatalog(settings)
    parked: dict[str, dict[str, Any]] = {}
    for _, event in read_events(settings, catalog["flow"].name, SingleObjectCodec(),
                                event_types=frozenset({"flow.session.limit",
                                                       "flow.session.limits.changed"})):
        key = str(Scope.of_session(event.tenant_id, event.execution_session_id))
        if isinstance(event, SessionLimitCrossed) and event.threshold == "reached" \
                and event.on_limit == "park":
            s, t = event.execution_session_id, event.tenant_id
            parked[key] = {
                "kind": "session_limit", "work_unit_id": "", "tenant_id": t, "session_id": s,
                "since": event.occurred_at, "attempt": 0, "node_id": "", "effect": "",
                "reason": event.detail, "deadline": None, "limit": event.limit,
                "resolve": f"onceflow session limits {s} --tenant {t} "
                           f"--{event.limit.replace('_', '-')} N | onceflow cancel --session "
                           f"{s} --tenant {t}"}
        elif isinstance(event, SessionLimitsChanged) and event.resumed:
            parked.pop(key, None)
    if parked:
        for _, event in read_events(settings, catalog["workunits"].name, SingleObjectCodec(),
                                    event_types=frozenset({"control.applied"})):
            if isinstance(event, ControlApplied) and event.action == "cancel" \
                    and event.outcome not in CONTROL_NOT_TAKEN:
                parked.pop(event.target, None)
    return parked


@dataclass(frozen=True)
class Answer:
    """A person's answer to an input step, ready to send: `problem` says what is wrong with
    it against the step's schema ('' nothing); a bad answer is sent too, so the refusal is
    on the log, but it is not stored."""

    event: ControlHumanInputSubmitted
    problem: str


def step_of(settings: Any, step: str) -> Any:
    """The admitted submission of a unit, from the scheduler's log (None: no such unit)."""
    from onceflow.schemas import SingleObjectCodec, WorkUnitSubmitted
    from onceflow.streams.kafka import read_events
    from onceflow.streams.topics.catalog import TopicCatalog

    for _, event in read_events(settings, TopicCatalog(settings)["workunits"].name,
                                SingleObjectCodec(),
                                event_types=frozenset({"workunit.submitted"})):
        if isinstance(event, WorkUnitSubmitted) and event.work_unit_id == step:
            return event
    return None


def prepare_answer(settings: Any, session_id: str, step: str, tenant: str, data: bytes,
                   submitted_by: str) -> Answer:
    """Check an answer against its input step (and the step's JSON schema) and store it."""
    from onceflow.streams.content import open_content_store

    spec = step_of(settings, step)
    if spec is None or spec.execution_session_id != session_id or spec.tenant_id != tenant:
        raise SteeringError(f"no step {step!r} in session {session_id!r} of tenant {tenant!r}")
    if spec.kind != "input":
        raise SteeringError(f"{step} is not an input step (it is a {spec.kind} unit)")
    media_type = "application/octet-stream"
    schema_text = spec.parameters.get("schema")
    problem = ""
    if schema_text:
        import jsonschema

        media_type = "application/json"
        try:
            jsonschema.validate(json.loads(data), json.loads(schema_text))
        except ValueError as exc:
            problem = f"it is not JSON ({exc}); the step asks for JSON"
        except jsonschema.ValidationError as exc:
            where = "/".join(str(p) for p in exc.absolute_path) or "the answer"
            problem = f"{where}: {exc.message}"
    ref = None if problem else open_content_store(settings).put(data, media_type)
    return Answer(ControlHumanInputSubmitted(
        event_id=uuid.uuid4().hex, occurred_at=int(time.time() * 1000), tenant_id=tenant,
        execution_session_id=session_id, work_unit_id=step, prompt_id=step, input_ref=ref,
        submitted_by=submitted_by, schema_error=problem), problem)
