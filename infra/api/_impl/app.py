"""The HTTP API: submit, read units and sessions, stream a session's facts, steer work, read
the inbox and the wallets; beside the ksqlDB-shaped /ksql and /query-stream of the views
service it is mounted on.

Reads (GET under /v1) and controls (POST under /v1/control) are separate
routers. Every route is scoped to a tenant by the `X-Onceflow-Tenant` header
(as the views are), and with `ONCEFLOW_API_TOKEN` set every route asks for
`Authorization: Bearer <token>`. A bad request gets a 4xx whose `detail` says
what is wrong; nothing here answers 5xx by design.

Every read is answered by the read model (`onceflow.infra.readmodel`): a few
key lookups however long the log, with the position it reflects in the
`X-Onceflow-Position` header. A write answers once the read model holds it, so
the caller's next read shows it (read your writes).
"""

from __future__ import annotations

import contextlib
import json
import time
import uuid
from collections.abc import Iterator
from typing import Annotated, Any, Literal

from fastapi import APIRouter, FastAPI, Header, HTTPException, Query, Response
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from onceflow.infra.readmodel import (
    ReadModelFeed,
    ReadModelLagging,
    ReadModelReader,
    position_header,
)
from onceflow.schemas import (
    PLATFORM_TENANT,
    CodecError,
    ControlApplied,
    ControlRequested,
    EffectLabel,
    IdempotencyClass,
    Priority,
    SessionLimits,
    WorkKind,
    acts_for,
)
from onceflow.settings import OnceflowSettings
from onceflow.streams.auth import require_token

__all__ = ["UNIT_SETTLED", "add_api_routes", "applied_records", "create_api", "require_token"]

Tenant = Annotated[str, Header(alias="X-Onceflow-Tenant", min_length=1, max_length=200,
                               pattern=r"^[A-Za-z0-9._:-]+$",
                               description="the tenant every answer is scoped to")]
Id = Annotated[str, Field(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9._:-]+$")]
At = Annotated[int | None, Query(ge=0, le=2**62, description=(
    "as the log held it at this logged time (ms since the epoch)"))]
Owner = Annotated[str | None, Query(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9._:-]+$",
                                    description="another tenant's (for the platform operator)")]
#: a unit in one of these has ended (or waits for an operator): `until_ended_s` stops there
UNIT_SETTLED = frozenset({"completed", "failed", "rejected", "cancelled", "needs_operator"})


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
    #: its state once admitted or refused ('' when not, within `wait_s`)
    state: str = ""
    #: the read model holds it: the caller's next read shows it
    admitted: bool = False


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


def add_api_routes(app: FastAPI, settings: OnceflowSettings, token: str | None = None,
                   feed: ReadModelFeed | None = None) -> None:
    """The API's routes, on `app` (the views service's, or a bare one in tests), answering
    reads from `feed`'s read model (one is started here when none is given)."""
    if feed is None:
        feed = ReadModelFeed(settings).start()
        app.state.read_model = feed  # closed by whoever closes the app's service
    model: ReadModelFeed = feed
    reads = APIRouter(prefix="/v1", tags=["read"], dependencies=[require_token(token)])
    controls = APIRouter(prefix="/v1/control", tags=["control"],
                         dependencies=[require_token(token)])

    def reader(response: Response) -> ReadModelReader:
        """The read model as of its last checkpoint, and the position it reflects."""
        found = model.reader()
        response.headers["X-Onceflow-Position"] = position_header(found)
        return found

    def waited(ready: Any, timeout_s: float, what: str) -> Any:
        try:
            return model.wait_for(ready, timeout_s, what)
        except ReadModelLagging as exc:
            raise HTTPException(504, str(exc)) from None

    @reads.get("/units/{work_unit_id}", responses={404: {"description": "no such unit"}})
    def get_unit(work_unit_id: str, tenant: Tenant, response: Response, at: At = None,
                 until_ended_s: Annotated[float, Query(
                     ge=0, le=10, description="wait up to this long for it to end")] = 0
                 ) -> dict[str, Any]:
        """A unit's state, attempts, node, cost and result address (`at`: as the log held
        them at that logged time, ms). With `until_ended_s`, answers once it ended (a unit
        not admitted yet is waited for 2 s at most)."""
        def ended(r: ReadModelReader) -> dict[str, Any] | None:
            unit = r.unit(tenant, work_unit_id)
            return unit if unit is not None and unit["state"] in UNIT_SETTLED else None

        if until_ended_s and at is None:
            began = time.monotonic()
            with contextlib.suppress(HTTPException):
                waited(lambda r: r.unit(tenant, work_unit_id), min(until_ended_s, 2.0),
                       f"the admission of unit {work_unit_id}")
                waited(ended, max(0.0, until_ended_s - (time.monotonic() - began)),
                       f"the end of unit {work_unit_id}")
        found = reader(response).unit(tenant, work_unit_id, at)
        if found is None:
            raise HTTPException(404, f"no work unit {work_unit_id!r} of tenant {tenant!r}"
                                + (f" at {at}" if at is not None else ""))
        return found

    @reads.get("/units/{work_unit_id}/facts", responses={404: {"description": "no such unit"}})
    def unit_facts(work_unit_id: str, tenant: Tenant, response: Response
                   ) -> list[dict[str, Any]]:
        """Every decision about a unit, in logged time's order (what `onceflow why` shows)."""
        r = reader(response)
        if r.unit(tenant, work_unit_id) is None:
            raise HTTPException(404, f"no work unit {work_unit_id!r} of tenant {tenant!r}")
        return [e.model_dump(mode="json") for e in r.facts(work_unit_id)]

    @reads.get("/units/{work_unit_id}/submission",
               responses={404: {"description": "no such unit"}})
    def unit_submission(work_unit_id: str, tenant: Tenant, response: Response
                        ) -> dict[str, Any]:
        """The unit's admitted submission, as the scheduler admitted it."""
        found = reader(response).submission(tenant, work_unit_id)
        if found is None:
            raise HTTPException(404, f"no work unit {work_unit_id!r} of tenant {tenant!r}")
        return found.model_dump(mode="json")

    @reads.get("/sessions")
    def list_sessions(tenant: Tenant, response: Response,
                      state: Annotated[str | None, Query(max_length=40)] = None
                      ) -> list[dict[str, Any]]:
        """The tenant's sessions (every tenant's, for the operator), oldest first."""
        return reader(response).sessions(tenant, state)

    @reads.get("/sessions/{session_id}", responses={404: {"description": "no such session"}})
    def get_session(session_id: str, tenant: Tenant, response: Response, at: At = None,
                    owner: Owner = None) -> dict[str, Any]:
        """A session: its state, cost, limits and its steps' DAG (`at`: as it was then)."""
        view = reader(response).session(tenant, owner or tenant, session_id, at)
        if view is None:
            raise HTTPException(404, f"no session {session_id!r} of tenant "
                                     f"{owner or tenant!r}"
                                + (f" at {at}" if at is not None else ""))
        return {**view.as_json(), "dag": [s.as_json() for s in view.steps.values()]}

    @reads.get("/sessions/{session_id}/facts",
               responses={404: {"description": "no such session"}})
    def session_facts(session_id: str, tenant: Tenant, response: Response,
                      owner: Owner = None) -> list[dict[str, Any]]:
        """Every decision about a session's units and the session, in logged time's order."""
        r = reader(response)
        if r.session(tenant, owner or tenant, session_id) is None:
            raise HTTPException(404, f"no session {session_id!r} of tenant "
                                     f"{owner or tenant!r}")
        return [e.model_dump(mode="json") for e in r.session_facts(owner or tenant, session_id)]

    @reads.get("/sessions/{session_id}/limits",
               responses={404: {"description": "no limits for the session"}})
    def session_limits(session_id: str, tenant: Tenant, response: Response,
                       owner: Owner = None) -> dict[str, Any]:
        """A session's execution limits: the last an operator set, else its submission's."""
        found = reader(response).session_limits(owner or tenant, session_id) \
            if acts_for(tenant, owner or tenant) else None
        if found is None:
            raise HTTPException(404, f"session {session_id!r} of tenant {owner or tenant!r} "
                                     "has no limits")
        return found.model_dump(mode="json", exclude_none=True)

    @reads.get("/sessions/{session_id}/events",
               responses={200: {"content": {"text/event-stream": {}}},
                          404: {"description": "no such session"}})
    def session_events(session_id: str, tenant: Tenant, response: Response,
                       follow: Annotated[bool, Query()] = False,
                       timeout_s: Annotated[float, Query(ge=0, le=600)] = 30.0
                       ) -> StreamingResponse:
        """The scheduler's facts about a session as server-sent events; with `follow`,
        new ones as they come until every step has ended (or `timeout_s`)."""
        r = reader(response)
        if r.session(tenant, tenant, session_id) is None:
            raise HTTPException(404, f"no session {session_id!r} of tenant {tenant!r}")
        return StreamingResponse(_events(settings, r, tenant, session_id, follow, timeout_s),
                                 media_type="text/event-stream")

    @reads.get("/inbox")
    def inbox(tenant: Tenant, response: Response) -> list[dict[str, Any]]:
        """What waits for a person, oldest first."""
        return reader(response).inbox(tenant)

    @reads.get("/wallet", responses={404: {"description": "nothing billed yet"}})
    def wallet(tenant: Tenant, response: Response, at: At = None,
               owner: Owner = None) -> dict[str, Any]:
        """The tenant's wallet: credit, charged, reserved, balance, leakage (`at`: as its
        partials stood then)."""
        found = reader(response).wallet(owner or tenant, at) \
            if acts_for(tenant, owner or tenant) else None
        if found is None:
            raise HTTPException(404, f"no wallet for tenant {owner or tenant!r}: nothing had "
                                     "been billed to it" + (f" by {at}" if at else " yet"))
        out: dict[str, Any] = found.as_json()
        return out

    @reads.get("/wallets")
    def wallets(tenant: Tenant, response: Response, at: At = None, owner: Owner = None,
                tenants_only: Annotated[bool, Query(
                    description="the tenants' wallets only, not their sessions'")] = False
                ) -> list[dict[str, Any]]:
        """A tenant's wallets: its own and its sessions' (the operator: every tenant's, or
        `owner`'s)."""
        if owner is not None and not acts_for(tenant, owner):
            return []
        found = reader(response).wallets(owner or tenant, at, tenants_only=tenants_only)
        return [w.as_json() for _, w in sorted(found.items())]

    @reads.get("/status")
    def status(tenant: Tenant, response: Response, at: At = None) -> dict[str, Any]:
        """Units by state (at `at`: as the log held them then), nodes with trust and
        heartbeat age, capacity, limits, and the read model's own position and lag."""
        if tenant != PLATFORM_TENANT:
            raise HTTPException(403, "the stack's status is the platform operator's: send "
                                     f"X-Onceflow-Tenant: {PLATFORM_TENANT}")
        report = reader(response).stack(int(time.time() * 1000), at)
        return {**report, "read_model": model.status()}

    @reads.get("/limits")
    def limits(tenant: Tenant, response: Response) -> dict[str, Any]:
        """What holds work back right now: slots, queues, rate windows, budgets, pauses."""
        return reader(response).limits(int(time.time() * 1000))

    @reads.get("/controls/{control_id}")
    def control_records(control_id: str, tenant: Tenant, response: Response,
                        expected: Annotated[int, Query(ge=1, le=1000)] = 1,
                        timeout_s: Annotated[float, Query(ge=0, le=10)] = 0
                        ) -> list[dict[str, Any]]:
        """The scheduler partitions' records of a control (waiting up to `timeout_s` for
        `expected` of them): what a control's sender reads back."""
        if timeout_s:
            return [a.model_dump(mode="json")
                    for a in applied_records(model, control_id, expected, timeout_s)
                    if acts_for(tenant, a.tenant_id)]
        return [a.model_dump(mode="json") for a in reader(response).control_records(control_id)
                if acts_for(tenant, a.tenant_id)]

    @reads.get("/limit-changes/{request_id}",
               responses={404: {"description": "not taken (yet)"}})
    def limit_change(request_id: str, tenant: Tenant, response: Response,
                     timeout_s: Annotated[float, Query(ge=0, le=10)] = 0) -> dict[str, Any]:
        """The limiter's answer to a request for new session limits."""
        if timeout_s:
            with contextlib.suppress(HTTPException):
                waited(lambda r: r.limits_changed(request_id), timeout_s,
                       f"the limiter's answer to {request_id}")
        found = reader(response).limits_changed(request_id)
        if found is None or not acts_for(tenant, found.tenant_id):
            raise HTTPException(404, f"the limiter has not taken {request_id!r}")
        return found.model_dump(mode="json")

    @reads.get("/read-model")
    def read_model(response: Response) -> dict[str, Any]:
        """The read model's position in the log, its lag, whether it has caught up."""
        reader(response)
        return model.status()

    @controls.post("/units", status_code=202)
    def submit(unit: SubmitUnit, tenant: Tenant,
               wait_s: Annotated[float, Query(
                   ge=0, le=10, description="wait up to this long for the scheduler to admit "
                                            "(or refuse) it, so the next read shows it")] = 10.0
               ) -> Submitted:
        """Submit a unit; the same unit again is the same submission. Answers once the
        read model holds the unit (admitted or refused), so the caller's next read sees it
        (`wait_s=0`: at once). `admitted` false: it was sent but not admitted within
        `wait_s` (sending it again is the same submission)."""
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
        wu = event.work_unit_id or ""
        state = ""
        if wait_s:
            what = f"the admission of {wu}"
            with contextlib.suppress(ReadModelLagging):
                state = model.wait_for(lambda r: r.unit(tenant, wu), wait_s, what)["state"]
                # and the rest of its admission (an approval it waits for, say)
                model.wait_for_log_end(("workunits",), wait_s, what)
        return Submitted(work_unit_id=wu, event_id=event.event_id, state=state,
                         admitted=bool(state))

    @controls.post("/actions", responses={404: {"description": "no such unit of the tenant"},
                                          409: {"description": "refused, with why"}})
    def act(body: ControlBody, tenant: Tenant) -> list[ControlRecord]:
        """Pause, resume or cancel a unit, a session or the tenant's work; approve or deny a
        unit waiting for it. Answers once every partition recorded it."""
        from onceflow.infra.steering import send_command

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
        records = applied_records(model, command.event_id, expected, 10.0)
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
        from onceflow.infra.steering import send_command
        from onceflow.schemas import ControlOperatorResolved

        if body.result is not None and body.resolution != "mark_done":
            raise HTTPException(422, "a result goes with mark_done only")
        step = model.reader().submission(tenant, body.work_unit_id)
        if step is None:
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
        records = applied_records(model, event.event_id, 1, 10.0)
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


def applied_records(model: ReadModelFeed, control_id: str, expected: int, timeout: float
                 ) -> list[ControlApplied]:
    """The partitions' records of a control once all `expected` are in the read model (or
    what is there at the timeout)."""
    with contextlib.suppress(ReadModelLagging):
        model.wait_for(lambda r: len(r.control_records(control_id)) >= expected, timeout,
                       f"the records of control {control_id}")
        # and what the control did (a cancel's cancellations follow its record)
        model.wait_for_log_end(("workunits",), timeout, f"the effects of control {control_id}")
    return model.reader().control_records(control_id)


def _events(settings: OnceflowSettings, reader: ReadModelReader, tenant: str, session: str,
            follow: bool, timeout_s: float) -> Iterator[str]:
    """The session's facts the read model holds, then (`follow`) those after them, read
    from the work-unit topic from the very offsets the read model had reached."""
    from onceflow.infra.client._impl.client import _ENDED, _ended_state
    from onceflow.schemas import SingleObjectCodec, WorkUnitSubmitted
    from onceflow.streams.kafka import TopicFollower
    from onceflow.streams.topics.catalog import TopicCatalog

    steps: dict[str, str] = {}

    def seen(event: Any) -> str:
        wu = event.work_unit_id or ""
        if isinstance(event, WorkUnitSubmitted):
            steps.setdefault(wu, "")
        ended = _ended_state(event)
        if ended is not None:
            steps[wu] = ended[0]
        return (f"id: {event.event_id}\nevent: {event.event_type}\n"
                f"data: {json.dumps(event.model_dump(mode='json'))}\n\n")

    for event in reader.session_facts(tenant, session):
        if not event.event_type.startswith("flow."):
            yield seen(event)
    done = bool(steps) and all(s in _ENDED for s in steps.values())
    if not follow or done:
        return
    topic = TopicCatalog(settings)["workunits"].name
    starts = {int(k.rsplit(":", 1)[1]): v for k, v in reader.position().items()
              if k.rsplit(":", 1)[0] == topic}
    codec = SingleObjectCodec()
    follower = TopicFollower(settings, [topic], start_offsets=starts)
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            for msg in follower.read(0.5):
                try:
                    event = codec.decode(msg.value() or b"")
                except CodecError:
                    continue
                if (event.tenant_id, event.execution_session_id) == (tenant, session):
                    yield seen(event)
            if bool(steps) and all(s in _ENDED for s in steps.values()):
                return
    finally:
        follower.close()


def create_api(settings: OnceflowSettings, token: str | None = None,
               feed: ReadModelFeed | None = None) -> FastAPI:
    """The API alone (the views service mounts it beside its own routes)."""
    app = FastAPI(title="onceflow", version="0.1")
    add_api_routes(app, settings, token, feed)
    return app
