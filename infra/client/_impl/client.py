"""The Python client: submit units and sessions, await their results, steer them, read the
ledger. A program's way in, where the CLI is a person's.

It writes to Kafka and the content store directly, like the roles do: a
submission is a `workunit.submitted` on the submissions topic (its event id
derived from its payload, so a resend is the same submission). It reads from
the read model of the views service: a unit's state and result address (the
result then fetched from the content store by its digest, which is checked),
a session's facts, the inbox, wallets. Controls are the operators' commands
(`onceflow.infra.steering`), waited for until the read model holds the
scheduler partitions' records of them, so the next read shows them.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from onceflow.infra.client._impl.steps import Step
from onceflow.schemas import (
    CONTROL_NOT_TAKEN,
    ContentRef,
    ControlAction,
    ControlApplied,
    ControlRequested,
    ControlScope,
    Event,
    SessionLimits,
    SessionLimitsSet,
    WorkUnitCancelled,
    WorkUnitCompleted,
    WorkUnitFailed,
    WorkUnitNeedsOperator,
    WorkUnitRejected,
    WorkUnitSubmitted,
    rejection_ends_unit,
)
from onceflow.settings import OnceflowSettings

__all__ = [
    "Client",
    "ControlRefused",
    "SessionHandle",
    "UnitFailed",
    "UnitHandle",
]

#: how a unit's state machine can end (and `needs_operator`, where it waits for a person)
_ENDED = frozenset({"completed", "failed", "rejected", "cancelled"})


class UnitFailed(Exception):
    """The unit ended without a result: failed, rejected or cancelled, with why."""

    def __init__(self, work_unit_id: str, state: str, code: str, reason: str) -> None:
        super().__init__(f"work unit {work_unit_id} {state} ({code}): {reason}")
        self.work_unit_id, self.state, self.code, self.reason = work_unit_id, state, code, reason


class ControlRefused(Exception):
    """A scheduler partition refused a control, saying why (`records` has every record)."""

    def __init__(self, detail: str, records: list[ControlApplied]) -> None:
        super().__init__(detail)
        self.records = records


def _ended_state(event: Event) -> tuple[str, str, str] | None:
    """(state, code, reason) when `event` ends its unit or parks it; None otherwise."""
    if isinstance(event, WorkUnitCompleted) and event.accepted:
        return "completed", event.settlement_reason, ""
    if isinstance(event, WorkUnitFailed):
        return "failed", event.error_code, event.error_reason
    if isinstance(event, WorkUnitRejected):
        return "rejected", event.reason_code, event.reason
    if isinstance(event, WorkUnitCancelled):
        return "cancelled", "cancelled", event.reason
    if isinstance(event, WorkUnitNeedsOperator):
        return "needs_operator", event.reason_code, event.reason
    return None


def outcome_of(facts: list[Event]) -> tuple[str, str, str, Event] | None:
    """A unit's outcome from its facts in order: (state, code, reason, the fact) once it
    ended or waits for an operator; None before (or once an operator sent it back)."""
    found = None
    admitted = False
    for event in facts:
        if isinstance(event, WorkUnitSubmitted):
            admitted = True
        ended = _ended_state(event)
        if ended is not None and ended[0] == "rejected" and not rejection_ends_unit(
                ended[1], admitted):
            ended = None  # a resend refused: the unit stays as it was
        if ended is not None:
            found = (*ended, event)
        elif found is not None and found[0] == "needs_operator" and event.event_type in (
                "workunit.scheduled", "workunit.deferred", "workunit.retry.scheduled"):
            found = None  # the operator sent it back to work
    return found


@dataclass
class UnitHandle:
    """A submitted unit: its state, and its result once it has one (read from the read
    model of the views service)."""

    client: Client
    work_unit_id: str
    tenant_id: str
    session_id: str
    digest: str = field(repr=False)

    def _outcome(self) -> tuple[str, str, str, Event] | None:
        found = self.client._reads().get(f"/units/{self.work_unit_id}/facts",
                                          missing_ok=True)
        return None if not found else outcome_of([_event(d) for d in found])

    def outcome(self) -> tuple[str, str, str] | None:
        """(state, code, reason) once it ended or waits for an operator; None before."""
        found = self._outcome()
        return None if found is None else found[:3]

    def result(self, timeout: float = 60.0) -> bytes:
        """The unit's result bytes, digest checked, once it completed; `UnitFailed` when it
        failed, was rejected or cancelled; `TimeoutError` when it has not ended in time."""
        deadline = time.monotonic() + timeout
        reads = self.client._reads()
        while True:
            left = deadline - time.monotonic()
            # the service waits for the end (at most a few seconds a request)
            unit = reads.get(f"/units/{self.work_unit_id}",
                             {"until_ended_s": round(max(0.0, min(left, 5.0)), 3)},
                             missing_ok=True)
            if unit is not None and unit["state"] in _ENDED:
                if unit["state"] == "completed":
                    ref = unit["result_ref"]
                    return self.client.fetch(ContentRef.model_validate(ref)) if ref else b""
                found = self._outcome()
                state, code, reason = found[:3] if found else (unit["state"], "", "")
                raise UnitFailed(self.work_unit_id, state, code, reason)
            if time.monotonic() >= deadline:
                state = unit["state"] if unit else "not admitted yet"
                raise TimeoutError(f"work unit {self.work_unit_id} has no result after "
                                   f"{timeout:g} s (it is {state})")


def _event(data: dict[str, Any]) -> Event:
    """An event as the API answered it (its JSON), as its type."""
    from onceflow.schemas import default_registry

    model = default_registry().for_type(data["event_type"]).model
    assert model is not None, data["event_type"]
    return model.model_validate(data)


@dataclass
class SessionHandle:
    """A submitted session: its steps' handles, their results, and its facts as they come."""

    client: Client
    tenant_id: str
    session_id: str
    steps: dict[str, UnitHandle]

    def results(self, timeout: float = 60.0) -> dict[str, bytes | UnitFailed]:
        """Every step's result (or why it has none), once all have ended."""
        deadline = time.monotonic() + timeout
        out: dict[str, bytes | UnitFailed] = {}
        for wu, handle in self.steps.items():
            try:
                out[wu] = handle.result(max(0.0, deadline - time.monotonic()))
            except UnitFailed as exc:
                out[wu] = exc
        return out

    def done(self) -> bool:
        view = self.client._reads().get(f"/sessions/{self.session_id}",
                                        {"owner": self.tenant_id}, missing_ok=True)
        states = {s["work_unit_id"]: s["state"] for s in (view["dag"] if view else [])}
        return all(states.get(wu) in _ENDED for wu in self.steps)

    def events(self, timeout: float = 60.0) -> Iterator[Event]:
        """The scheduler's facts about the session, from its first, as they arrive: until
        every step has ended (or `timeout`)."""
        import json

        import httpx

        reads = self.client._reads()
        params = {"follow": "true", "timeout_s": str(timeout)}
        with httpx.stream("GET", f"{reads.url}/v1/sessions/{self.session_id}/events",
                          params=params, headers={**reads.headers,
                                                  "X-Onceflow-Tenant": self.tenant_id},
                          timeout=timeout + 30) as resp:
            if resp.status_code == 404:
                return
            for line in resp.iter_lines():
                if line.startswith("data: "):
                    yield _event(json.loads(line[len("data: "):]))


class Client:
    """onceflow from Python: submit, await, steer, read the ledger.

    Settings come from the environment (`ONCEFLOW_*`, as every role reads them)
    unless given. Use it as a context manager, or `close()` it.
    """

    def __init__(self, settings: OnceflowSettings | None = None, *,
                 views_url: str | None = None, actor: str = "client") -> None:
        from onceflow.schemas import SingleObjectCodec
        from onceflow.settings import load_settings
        from onceflow.streams.content import open_content_store
        from onceflow.streams.kafka import EventProducer
        from onceflow.streams.topics.catalog import TopicCatalog

        self.settings = settings or load_settings()
        self.catalog = TopicCatalog(self.settings)
        self.actor = actor
        self._views_url = views_url
        self._producer = EventProducer(self.settings, SingleObjectCodec())
        self._store = open_content_store(self.settings)
        self._api: Any = None
        self._handles: dict[str, UnitHandle] = {}
        self._lock = threading.Lock()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        self._producer.flush()
        if self._api is not None:
            self._api.close()

    def _reads(self) -> Any:
        """The read model (`onceflow.infra.readmodel.ReadApi`), as the platform's operator:
        a program with this client writes to the log itself, as a role does."""
        if self._api is None:
            from onceflow.infra.readmodel import ReadApi

            self._api = ReadApi(self.settings, self.views_url())
        return self._api

    # -- submitting ------------------------------------------------------------------------

    def submit(self, step: Step, *, tenant: str, session: str | None = None,
               **session_fields: Any) -> UnitHandle:
        """Submit one step (its session: `session`, else its own); the same unit submitted
        again returns the same handle, and a different payload under its id is refused."""
        (handle,) = self._submit([step], tenant, session, session_fields).values()
        return handle

    def submit_session(self, session_id: str, steps: Sequence[Step], *, tenant: str,
                       limits: SessionLimits | None = None, budget_usd: Decimal | None = None,
                       fail_fast: bool = False) -> SessionHandle:
        """Submit a session's steps (a DAG through their `depends_on`), with its limits."""
        fields: dict[str, Any] = {"session_limits": limits, "session_budget_usd": budget_usd}
        if fail_fast:
            fields["failure_policy"] = "fail_fast"
        handles = self._submit(steps, tenant, session_id, fields)
        return SessionHandle(self, tenant, session_id, handles)

    def _submit(self, steps: Sequence[Step], tenant: str, session: str | None,
                session_fields: dict[str, Any]) -> dict[str, UnitHandle]:
        from onceflow.infra.cli.submit import build_unit
        from onceflow.streams.ids import payload_digest

        ids = [s.work_unit_id for s in steps]
        if len(set(ids)) != len(ids):
            raise ValueError(f"a session names each step once; repeated: "
                             f"{sorted({i for i in ids if ids.count(i) > 1})}")
        units: list[WorkUnitSubmitted] = []
        for step in steps:
            data = {k: v for k, v in {**step.fields, **session_fields}.items() if v is not None}
            data.update(work_unit_id=step.work_unit_id, kind=step.kind, tenant_id=tenant,
                        depends_on=list(step.depends_on))
            if session is not None:
                data["execution_session_id"] = session
            if step.data is not None:
                data["input_ref"] = self._store.put(step.data).model_dump()
            units.append(build_unit(data))
        handles: dict[str, UnitHandle] = {}
        with self._lock:
            for unit in units:
                wu = unit.work_unit_id or ""
                digest = payload_digest(unit)
                known = self._handles.get(wu)
                if known is not None and known.digest != digest:
                    raise ValueError(f"work unit {wu} was already submitted with another "
                                     "payload; submit the new one under a new work_unit_id")
                if known is None:
                    self._producer.send(self.catalog["submissions"], unit)
                    known = self._handles[wu] = UnitHandle(
                        self, wu, tenant, unit.execution_session_id, digest)
                handles[wu] = known
            self._producer.flush()
        return handles

    def handle(self, work_unit_id: str) -> UnitHandle:
        """The handle of a unit this client submitted."""
        return self._handles[work_unit_id]

    def fetch(self, ref: ContentRef) -> bytes:
        """Bytes from the content store, checked against their digest by the store
        (`ContentIntegrityError` when they do not hash to it)."""
        return self._store.get(ref)

    # -- steering ----------------------------------------------------------------------------

    def _control(self, action: ControlAction, *, unit: str | None = None,
                 session: str | None = None, tenant: str | None = None, queue: bool = False,
                 reason: str = "", wait: float = 10.0) -> list[ControlApplied]:
        from onceflow.infra.steering import send_command, wait_applied

        scope: ControlScope
        target: dict[str, Any]
        if unit is not None:
            scope, target = "unit", {"work_unit_id": unit,
                                     **({"tenant_id": tenant} if tenant else {})}
            known = self._handles.get(unit)
            if known is not None:  # its session's record then tells of it too
                target.update(tenant_id=known.tenant_id, execution_session_id=known.session_id)
        elif session is not None:
            if tenant is None:
                raise ValueError(f"session {session!r} needs its tenant")
            scope, target = "session", {"tenant_id": tenant, "execution_session_id": session}
        elif tenant is not None:
            scope, target = "tenant", {"tenant_id": tenant}
        elif queue:
            scope, target = "queue", {}
        else:
            raise ValueError("name what to act on: unit=, session= with tenant=, tenant=, or "
                             "queue=True")
        command = ControlRequested(
            event_id=uuid.uuid4().hex, occurred_at=int(time.time() * 1000), action=action,
            scope=scope, requested_by=self.actor, reason=reason, **target)
        send_command(self.settings, command)
        expected = 1 if scope == "unit" else self.catalog["reports"].partitions
        records = wait_applied(self.settings, command.event_id, expected, wait,
                               self.views_url())
        refused = [r for r in records if r.outcome in CONTROL_NOT_TAKEN]
        if refused:
            raise ControlRefused(refused[0].detail, records)
        return records

    def pause(self, **target: Any) -> list[ControlApplied]:
        """Pause a unit, a session, a tenant or the queue: nothing new in it is granted."""
        return self._control("pause", **target)

    def resume(self, **target: Any) -> list[ControlApplied]:
        return self._control("resume", **target)

    def cancel(self, **target: Any) -> list[ControlApplied]:
        """Cancel queued and running units of the scope; nothing reported after is accepted."""
        return self._control("cancel", **target)

    def approve(self, work_unit_id: str, reason: str = "") -> list[ControlApplied]:
        return self._control("approve", unit=work_unit_id, reason=reason)

    def deny(self, work_unit_id: str, reason: str) -> list[ControlApplied]:
        return self._control("deny", unit=work_unit_id, reason=reason)

    def answer(self, session: str, step: str, data: bytes, *, tenant: str,
               wait: float = 10.0) -> list[ControlApplied]:
        """Answer an input step: checked against its schema, stored, handed on."""
        from onceflow.infra.steering import prepare_answer, send_command, wait_applied

        url = self.views_url()
        answer = prepare_answer(self.settings, session, step, tenant, data, self.actor, url)
        send_command(self.settings, answer.event)
        records = wait_applied(self.settings, answer.event.event_id, 1, wait, url)
        if answer.problem:
            raise ControlRefused(f"the answer does not fit the step's schema: "
                                 f"{answer.problem}", records)
        if records and records[0].outcome in CONTROL_NOT_TAKEN:
            raise ControlRefused(records[0].detail, records)
        return records

    def set_limits(self, session: str, limits: SessionLimits, *, tenant: str,
                   reason: str = "") -> None:
        """A session's new execution limits (a parked session with room again resumes)."""
        from onceflow.infra.steering import send_command

        send_command(self.settings, SessionLimitsSet(
            event_id=uuid.uuid4().hex, occurred_at=int(time.time() * 1000), tenant_id=tenant,
            execution_session_id=session, session_limits=limits, requested_by=self.actor,
            reason=reason), "limits")

    def inbox(self, tenant: str | None = None) -> list[dict[str, Any]]:
        """Everything waiting for a person, oldest first (as `onceflow inbox` lists it)."""
        from onceflow.infra.steering import read_inbox

        return read_inbox(self.settings, tenant, self.views_url())

    # -- the ledger ---------------------------------------------------------------------------

    def wallet(self, tenant: str) -> Any:
        """A tenant's wallet (`onceflow.billing.Wallet`), None before anything was billed."""
        from onceflow.billing import Wallet

        found = self._reads().get("/wallet", {"owner": tenant}, missing_ok=True)
        return None if found is None else Wallet.from_json(found)

    def query(self, sql: str, *, tenant: str | None = None) -> list[dict[str, Any]]:
        """A pull query over the ledger's views (the ksqlDB-shaped API): its rows."""
        import json

        import httpx

        from onceflow.billing.views import DELIMITED
        from onceflow.schemas import PLATFORM_TENANT
        from onceflow.streams.auth import bearer_headers

        headers = {"Accept": DELIMITED, "X-Onceflow-Tenant": tenant or PLATFORM_TENANT,
                   **bearer_headers(self.settings.api_token)}
        resp = httpx.post(f"{self.views_url()}/query-stream",
                          json={"sql": sql, "properties": {}}, headers=headers, timeout=60)
        if resp.status_code != 200:
            raise ValueError(resp.json().get("message", resp.text))
        lines = [line for line in resp.text.splitlines() if line.strip()]
        columns = json.loads(lines[0])["columnNames"]
        return [dict(zip(columns, json.loads(line, parse_float=Decimal), strict=False))
                for line in lines[1:]]

    def views_url(self) -> str:
        """The views service (it keeps the read model every read asks): as given,
        `ONCEFLOW_VIEWS_URL` (`views_url`), or what `onceflow up` recorded."""
        from onceflow.infra.readmodel import ReadApiUnavailable, resolve_views_url

        try:
            return resolve_views_url(self.settings, self._views_url)
        except ReadApiUnavailable as exc:
            raise ValueError(str(exc)) from None
