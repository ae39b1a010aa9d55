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

from onceflow.schemas import ControlApplied, ControlHumanInputSubmitted, Event
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


def wait_applied(settings: Any, control_id: str, expected: int, timeout: float,
                 url: str | None = None) -> list[ControlApplied]:
    """The partitions' records of a control, once all `expected` are in (or at the timeout),
    asked of the read model (at `url`, else the one configured): once they are there, the
    sender's next read shows them."""
    from onceflow.infra.readmodel import ReadApi

    api = ReadApi(settings, url)
    try:
        found = api.get(f"/controls/{control_id}",
                        {"expected": expected, "timeout_s": timeout})
    finally:
        api.close()
    return [ControlApplied.model_validate(r) for r in found]


def read_inbox(settings: Any, tenant: str | None = None, url: str | None = None
               ) -> list[dict[str, Any]]:
    """Everything waiting for a person, oldest first: units parked in needs_operator, units
    waiting for an approval or an input, sessions parked at a limit (the read model's)."""
    from onceflow.infra.readmodel import ReadApi
    from onceflow.schemas import PLATFORM_TENANT

    api = ReadApi(settings, url, tenant=tenant or PLATFORM_TENANT)
    try:
        found: list[dict[str, Any]] = api.get("/inbox")
        return found
    finally:
        api.close()


@dataclass(frozen=True)
class Answer:
    """A person's answer to an input step, ready to send: `problem` says what is wrong with
    it against the step's schema ('' nothing); a bad answer is sent too, so the refusal is
    on the log, but it is not stored."""

    event: ControlHumanInputSubmitted
    problem: str


def step_of(settings: Any, step: str, url: str | None = None) -> Any:
    """The admitted submission of a unit, from the read model (None: no such unit)."""
    from onceflow.infra.readmodel import ReadApi
    from onceflow.schemas import WorkUnitSubmitted

    api = ReadApi(settings, url)
    try:
        found = api.get(f"/units/{step}/submission", missing_ok=True)
    finally:
        api.close()
    return None if found is None else WorkUnitSubmitted.model_validate(found)


def prepare_answer(settings: Any, session_id: str, step: str, tenant: str, data: bytes,
                   submitted_by: str, url: str | None = None) -> Answer:
    """Check an answer against its input step (and the step's JSON schema) and store it."""
    from onceflow.streams.content import open_content_store

    spec = step_of(settings, step, url)
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
