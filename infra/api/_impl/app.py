"""The HTTP API: submit, read units and sessions, stream a session's facts, steer work, read
the inbox and the wallets; beside the ksqlDB-shaped /ksql and /query-stream of the views
service it is mounted on.

Reads (GET under /v1) and controls (POST under /v1/control) are separate
routers. Every route is scoped to a tenant by the `X-Onceflow-Tenant` header
(as the views are), and with `ONCEFLOW_API_TOKEN` set every route asks for
`Authorization: Bearer <token>`. A bad request gets a 4xx whose `detail` says
what is wrong; nothing here answers 5xx by design.

Each read folds the topics from the start, like the CLI: right for a stack
and its tests, not for a log of years (a read model would serve those).
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from typing import Annotated, Any, Literal

from fastapi import APIRouter, FastAPI, Header, HTTPException, Query
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from onceflow.schemas import (
    CodecError,
    ControlRequested,
    EffectLabel,
    IdempotencyClass,
    Priority,
    SessionLimits,
    WorkKind,
)
from onceflow.settings import OnceflowSettings
from onceflow.streams.auth import require_token

__all__ = ["add_api_routes", "create_api", "require_token"]

Tenant = Annotated[str, Header(alias="X-Onceflow-Tenant", min_length=1, max_length=200,
                               pattern=r"^[A-Za-z0-9._:-]+$",
                               description="the tenant every answer is scoped to")]
Id = Annotated[str, Field(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9._:-]+$")]


class SubmitUnit(BaseModel):
    """A unit to run, as its submission's fields (the tenant is the header's)."""

    model_config = ConfigDict(extra="forbid")

    work_unit_id: Id
    execution_session_id: Id | None = None
    kind: WorkKind = "cpu"
    priority: Priority = "p2"
    handler: str | None = Field(default=None, max_length=200)
    simulated_ms: int = Field(default=0, ge=0, le=3_600_000)
    prompt: str | None = Field(default=None, max_length=100_000)
    model: str | None = Field(default=None, max_length=200)
    effect: EffectLabel = "PURE"
    idempotency_class: IdempotencyClass = "none"
    depends_on: list[Id] = Field(default_factory=list, max_length=1000)
    max_attempts: int = Field(default=5, ge=1, le=100)
    lease_ms: int = Field(default=30_000, ge=1, le=86_400_000)
    requires_approval: bool = False
    parameters: dict[str, str] = Field(default_factory=dict)
    session_limits: SessionLimits | None = None


class Submitted(BaseModel):
    work_unit_id: str
    event_id: str


class ControlBody(BaseModel):
    """A control: what to do to which unit or session (or to the tenant when neither)."""

    model_config = ConfigDict(extra="forbid")

    action: Literal["pause", "resume", "cancel", "approve", "deny"]
    work_unit_id: Id | None = None
    session_id: Id | None = None
    reason: str = Field(default="", max_length=2000)
    requested_by: str = Field(default="api", min_length=1, max_length=200)


class ResolutionBody(BaseModel):
    """An operator's decision on a unit parked in needs_operator."""

    model_config = ConfigDict(extra="forbid")

    work_unit_id: Id
    resolution: Literal["retry", "mark_done", "abandon"]
    #: with mark_done: the result, stored in the content store and handed to dependents
    result: str | None = Field(default=None, max_length=1_000_000)
    note: str = Field(default="", max_length=2000)
    operator: str = Field(default="api", min_length=1, max_length=200)


class ControlRecord(BaseModel):
    partition: int
    outcome: str
    detail: str
    cancelled: int
    stopping: int
    resumed: int


def add_api_routes(app: FastAPI, settings: OnceflowSettings, token: str | None = None) -> None:
    """The API's routes, on `app` (the views service's, or a bare one in tests)."""
    reads = APIRouter(prefix="/v1", tags=["read"], dependencies=[require_token(token)])
    controls = APIRouter(prefix="/v1/control", tags=["control"],
                         dependencies=[require_token(token)])

    def sessions(tenant: str, ledger: bool = True) -> dict[tuple[str, str], Any]:
        from onceflow.infra.sessions import fold_sessions, read_log

        facts, items = read_log(settings, ledger=ledger)
        return {k: v for k, v in fold_sessions(facts, items).items() if k[0] == tenant}

    @reads.get("/units/{work_unit_id}", responses={404: {"description": "no such unit"}})
    def get_unit(work_unit_id: str, tenant: Tenant) -> dict[str, Any]:
        """A unit's state, attempts, node, cost and result address."""
        for view in sessions(tenant).values():
            step = view.steps.get(work_unit_id)
            if step is not None:
                return {**step.as_json(), "tenant_id": tenant, "session_id": view.session_id}
        raise HTTPException(404, f"no work unit {work_unit_id!r} of tenant {tenant!r}")

    @reads.get("/sessions/{session_id}", responses={404: {"description": "no such session"}})
    def get_session(session_id: str, tenant: Tenant) -> dict[str, Any]:
        """A session: its state, cost, limits and its steps' DAG."""
        view = sessions(tenant).get((tenant, session_id))
        if view is None:
            raise HTTPException(404, f"no session {session_id!r} of tenant {tenant!r}")
        return {**view.as_json(), "dag": [s.as_json() for s in view.steps.values()]}

    @reads.get("/sessions/{session_id}/events",
               responses={200: {"content": {"text/event-stream": {}}},
                          404: {"description": "no such session"}})
    def session_events(session_id: str, tenant: Tenant,
                       follow: Annotated[bool, Query()] = False,
                       timeout_s: Annotated[float, Query(ge=0, le=600)] = 30.0
                       ) -> StreamingResponse:
        """The scheduler's facts about a session as server-sent events; with `follow`,
        new ones as they come until every step has ended (or `timeout_s`)."""
        if (tenant, session_id) not in sessions(tenant, ledger=False):
            raise HTTPException(404, f"no session {session_id!r} of tenant {tenant!r}")
        return StreamingResponse(_events(settings, tenant, session_id, follow, timeout_s),
                                 media_type="text/event-stream")

    @reads.get("/inbox")
    def inbox(tenant: Tenant) -> list[dict[str, Any]]:
        """What waits for a person, oldest first."""
        from onceflow.infra.steering import read_inbox

        return read_inbox(settings, tenant)

    @reads.get("/wallet", responses={404: {"description": "nothing billed yet"}})
    def wallet(tenant: Tenant) -> dict[str, Any]:
        """The tenant's wallet: credit, charged, balance, leakage."""
        from onceflow.billing import read_wallets, tenant_wallet_id

        found = read_wallets(settings).get(tenant_wallet_id(tenant))
        if found is None:
            raise HTTPException(404, f"no wallet for tenant {tenant!r}: nothing has been "
                                     "billed to it yet")
        out: dict[str, Any] = found.as_json()
        return out

    @controls.post("/units", status_code=202)
    def submit(unit: SubmitUnit, tenant: Tenant) -> Submitted:
        """Submit a unit; the same unit again is the same submission."""
        from onceflow.infra.cli.submit import SubmitInputError, build_unit
        from onceflow.infra.steering import SteeringError, send_command

        data = unit.model_dump(exclude_none=True)
        data["tenant_id"] = tenant
        if unit.session_limits is not None:
            data["session_limits"] = unit.session_limits
        try:
            event = build_unit(data)
        except SubmitInputError as exc:
            raise HTTPException(422, str(exc)) from None
        try:
            send_command(settings, event, "submissions")
        except CodecError as exc:
            raise HTTPException(422, f"the submission cannot be written as an event: {exc}; "
                                     "check its numbers fit (counts up to 2**63-1)") from None
        except SteeringError as exc:
            raise HTTPException(503, f"the log did not take the submission: {exc}") from None
        return Submitted(work_unit_id=event.work_unit_id or "", event_id=event.event_id)

    @controls.post("/actions", responses={404: {"description": "no such unit of the tenant"},
                                          409: {"description": "refused, with why"}})
    def act(body: ControlBody, tenant: Tenant) -> list[ControlRecord]:
        """Pause, resume or cancel a unit, a session or the tenant's work; approve or deny a
        unit waiting for it. Answers once every partition recorded it."""
        from onceflow.infra.steering import send_command, wait_applied

        if body.action in ("approve", "deny") and body.work_unit_id is None:
            raise HTTPException(422, f"{body.action} names a work_unit_id")
        if body.work_unit_id is not None and body.session_id is not None:
            raise HTTPException(422, "name a work_unit_id or a session_id, not both")
        target: dict[str, Any] = {"tenant_id": tenant}
        if body.work_unit_id is not None:
            scope, target["work_unit_id"] = "unit", body.work_unit_id
        elif body.session_id is not None:
            scope, target["execution_session_id"] = "session", body.session_id
        else:
            scope = "tenant"
        command = ControlRequested(
            event_id=uuid.uuid4().hex, occurred_at=int(time.time() * 1000), action=body.action,
            scope=scope, requested_by=body.requested_by, reason=body.reason,  # type: ignore[arg-type]
            **target)
        send_command(settings, command)
        from onceflow.streams.topics.catalog import TopicCatalog

        expected = 1 if scope == "unit" else TopicCatalog(settings)["reports"].partitions
        records = wait_applied(settings, command.event_id, expected, 10.0)
        out = [ControlRecord(partition=r.partition, outcome=r.outcome, detail=r.detail,
                             cancelled=r.cancelled, stopping=r.stopping, resumed=r.resumed)
               for r in records]
        if any(r.outcome == "not_found" for r in out):
            raise HTTPException(404, f"no work unit {body.work_unit_id!r} of tenant {tenant!r}")
        refused = [r for r in out if r.outcome == "refused"]
        if refused:
            raise HTTPException(409, refused[0].detail)
        return out

    @controls.post("/resolutions", responses={404: {"description": "no such unit"},
                                              409: {"description": "refused, with why"}})
    def resolve(body: ResolutionBody, tenant: Tenant) -> ControlRecord:
        """Resolve a unit parked in needs_operator: run it again, mark it done (with its
        result), or abandon it. Answers once its scheduler partition recorded it."""
        from onceflow.infra.steering import send_command, step_of, wait_applied
        from onceflow.schemas import ControlOperatorResolved

        if body.result is not None and body.resolution != "mark_done":
            raise HTTPException(422, "a result goes with mark_done only")
        step = step_of(settings, body.work_unit_id)
        if step is None or step.tenant_id != tenant:
            raise HTTPException(404, f"no work unit {body.work_unit_id!r} of tenant {tenant!r}")
        ref = None
        if body.result is not None:
            from onceflow.streams.content import open_content_store

            ref = open_content_store(settings).put(body.result.encode())
        event = ControlOperatorResolved(
            event_id=uuid.uuid4().hex, occurred_at=int(time.time() * 1000), tenant_id=tenant,
            work_unit_id=body.work_unit_id, resolution=body.resolution,
            operator=body.operator, note=body.note, result_ref=ref)
        send_command(settings, event)
        records = wait_applied(settings, event.event_id, 1, 10.0)
        if not records:
            raise HTTPException(504, "no scheduler recorded the resolution within 10 s")
        r = records[0]
        if r.outcome == "not_found":
            raise HTTPException(404, f"no work unit {body.work_unit_id!r} of tenant {tenant!r}")
        if r.outcome == "refused":
            raise HTTPException(409, r.detail)
        return ControlRecord(partition=r.partition, outcome=r.outcome, detail=r.detail,
                             cancelled=r.cancelled, stopping=r.stopping, resumed=r.resumed)

    app.include_router(reads)
    app.include_router(controls)


def _events(settings: OnceflowSettings, tenant: str, session: str, follow: bool,
            timeout_s: float) -> Iterator[str]:
    from onceflow.infra.client._impl.client import _ENDED, _ended_state
    from onceflow.schemas import CodecError, SingleObjectCodec, WorkUnitSubmitted
    from onceflow.streams.kafka import TopicFollower
    from onceflow.streams.topics.catalog import TopicCatalog

    codec = SingleObjectCodec()
    follower = TopicFollower(settings, [TopicCatalog(settings)["workunits"].name])
    steps: dict[str, str] = {}
    deadline = time.monotonic() + timeout_s
    try:
        reading = follower.read_to_end()
        while True:
            for msg in reading:
                try:
                    event = codec.decode(msg.value() or b"")
                except CodecError:
                    continue
                if (event.tenant_id, event.execution_session_id) != (tenant, session):
                    continue
                wu = event.work_unit_id or ""
                if isinstance(event, WorkUnitSubmitted):
                    steps.setdefault(wu, "")
                ended = _ended_state(event)
                if ended is not None:
                    steps[wu] = ended[0]
                yield (f"id: {event.event_id}\nevent: {event.event_type}\n"
                       f"data: {json.dumps(event.model_dump(mode='json'))}\n\n")
            done = bool(steps) and all(s in _ENDED for s in steps.values())
            if not follow or done or time.monotonic() >= deadline:
                return
            reading = follower.read(0.5)
    finally:
        follower.close()


def create_api(settings: OnceflowSettings, token: str | None = None) -> FastAPI:
    """The API alone (the views service mounts it beside its own routes)."""
    app = FastAPI(title="onceflow", version="0.1")
    add_api_routes(app, settings, token)
    return app
