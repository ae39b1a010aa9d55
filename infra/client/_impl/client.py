"""The Python client: submit units and sessions, await their results, steer them, read the
ledger. A program's way in, where the CLI is a person's.

It speaks to Kafka and the content store directly, like the roles do: a
submission is a `workunit.submitted` on the submissions topic (its event id
derived from its payload, so a resend is the same submission), a result is
read from the scheduler's settlement and fetched from the content store by
its digest, which is checked. Controls are the operators' commands
(`onceflow.infra.steering`), waited for until the scheduler partitions
recorded them.
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


class _Watch:
    """The scheduler's facts, followed from the start: each unit's outcome, and the facts of
    the sessions someone streams. Shared by a client's handles (and their threads)."""

    def __init__(self, settings: OnceflowSettings) -> None:
        from onceflow.schemas import SingleObjectCodec
        from onceflow.streams.kafka import TopicFollower
        from onceflow.streams.topics.catalog import TopicCatalog

        self.codec = SingleObjectCodec()
        self.follower = TopicFollower(settings, [TopicCatalog(settings)["workunits"].name])
        self.lock = threading.Lock()
        #: each unit's outcome: (state, code, reason, the fact)
        self.outcomes: dict[str, tuple[str, str, str, Event]] = {}
        #: each streamed session's facts, in the order read
        self.sessions: dict[tuple[str, str], list[Event]] = {}
        #: the units the scheduler admitted (a refused resend leaves them as they were)
        self.admitted: set[str] = set()

    def poll(self, timeout: float = 0.2) -> None:
        from onceflow.schemas import CodecError

        with self.lock:
            for msg in self.follower.read(timeout):
                try:
                    event = self.codec.decode(msg.value() or b"")
                except CodecError:
                    continue  # dead-lettered by the roles already
                ended = _ended_state(event)
                wu = event.work_unit_id or ""
                if isinstance(event, WorkUnitSubmitted):
                    self.admitted.add(wu)
                if ended is not None and ended[0] == "rejected" and not rejection_ends_unit(
                        ended[1], wu in self.admitted):
                    ended = None  # a resend refused: the unit stays as it was
                if ended is not None:
                    self.outcomes[wu] = (*ended, event)
                elif wu in self.outcomes and self.outcomes[wu][0] == "needs_operator" and \
                        not isinstance(event, WorkUnitNeedsOperator):
                    del self.outcomes[wu]  # the operator sent it back to work
                facts = self.sessions.get((event.tenant_id, event.execution_session_id))
                if facts is not None:
                    facts.append(event)

    def close(self) -> None:
        with self.lock:
            self.follower.close()


@dataclass
class UnitHandle:
    """A submitted unit: its state, and its result once it has one."""

    client: Client
    work_unit_id: str
    tenant_id: str
    session_id: str
    digest: str = field(repr=False)

    def outcome(self) -> tuple[str, str, str] | None:
        """(state, code, reason) once it ended or waits for an operator; None before."""
        self.client._watch.poll(0)
        found = self.client._watch.outcomes.get(self.work_unit_id)
        return None if found is None else found[:3]

    def result(self, timeout: float = 60.0) -> bytes:
        """The unit's result bytes, digest checked, once it completed; `UnitFailed` when it
        failed, was rejected or cancelled; `TimeoutError` when it has not ended in time."""
        deadline = time.monotonic() + timeout
        watch = self.client._watch
        while True:
            found = watch.outcomes.get(self.work_unit_id)
            if found is not None and found[0] in _ENDED:
                state, code, reason, fact = found
                if state != "completed":
                    raise UnitFailed(self.work_unit_id, state, code, reason)
                assert isinstance(fact, WorkUnitCompleted)
                return self.client.fetch(fact.result_ref) if fact.result_ref else b""
            if time.monotonic() >= deadline:
                state = found[0] if found else "not ended"
                raise TimeoutError(f"work unit {self.work_unit_id} has no result after "
                                   f"{timeout:g} s (it is {state})")
            watch.poll(0.2)


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
        self.client._watch.poll(0)
        outcomes = self.client._watch.outcomes
        return all(wu in outcomes and outcomes[wu][0] in _ENDED for wu in self.steps)

    def events(self, timeout: float = 60.0) -> Iterator[Event]:
        """The scheduler's facts about the session, from its first, as they arrive: until
        every step has ended (or `timeout`)."""
        watch = self.client._watch
        key = (self.tenant_id, self.session_id)
        with watch.lock:
            watch.sessions.setdefault(key, [])
        self.client._rewind_for(key)
        seen = 0
        deadline = time.monotonic() + timeout
        while True:
            facts = watch.sessions[key]
            while seen < len(facts):
                seen += 1
                yield facts[seen - 1]
            if (self.done() and seen == len(watch.sessions[key])) or (
                    time.monotonic() >= deadline):
                return
            watch.poll(0.2)


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
        self._watch = _Watch(self.settings)
        self._handles: dict[str, UnitHandle] = {}
        self._lock = threading.Lock()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        self._producer.flush()
        self._watch.close()

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

    def _rewind_for(self, key: tuple[str, str]) -> None:
        """A session streamed after some of its facts were read: read the topic again from
        the start into its list (the other lists are not filled twice)."""
        from onceflow.schemas import CodecError
        from onceflow.streams.kafka import TopicFollower

        watch = self._watch
        follower = TopicFollower(self.settings, [self.catalog["workunits"].name])
        try:
            earlier: list[Event] = []
            for msg in follower.read_to_end():
                try:
                    event = watch.codec.decode(msg.value() or b"")
                except CodecError:
                    continue
                if (event.tenant_id, event.execution_session_id) == key:
                    earlier.append(event)
        finally:
            follower.close()
        with watch.lock:
            ids = {e.event_id for e in earlier}
            watch.sessions[key] = earlier + [e for e in watch.sessions[key]
                                             if e.event_id not in ids]

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
        records = wait_applied(self.settings, command.event_id, expected, wait)
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

        answer = prepare_answer(self.settings, session, step, tenant, data, self.actor)
        send_command(self.settings, answer.event)
        records = wait_applied(self.settings, answer.event.event_id, 1, wait)
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

        return read_inbox(self.settings, tenant)

    # -- the ledger ---------------------------------------------------------------------------

    def wallet(self, tenant: str) -> Any:
        """A tenant's wallet (`onceflow.billing.Wallet`), None before anything was billed."""
        from onceflow.billing import read_wallets, tenant_wallet_id

        return read_wallets(self.settings).get(tenant_wallet_id(tenant))

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
        """The views API: as given, `ONCEFLOW_VIEWS_URL` (`views_url`), or what `onceflow up`
        recorded."""
        from onceflow.infra.stack import read_stack

        url = self._views_url or self.settings.views_url
        if not url:
            stack = read_stack(self.settings)
            url = stack.views_url if stack is not None else None
        if not url:
            raise ValueError("no views API known: run `onceflow up`, or pass views_url= "
                             "(or set ONCEFLOW_VIEWS_URL)")
        return url.rstrip("/")
