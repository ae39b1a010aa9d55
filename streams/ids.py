"""Deterministic identities: event ids, the envelope of a caused event, payload digests.

Every id onceflow writes is a function of what caused it, never of a clock
or a random draw, so re-deciding the same input after a crash writes the
same ids and every consumer can dedupe by them. Each rule lives here once.
"""

from __future__ import annotations

import hashlib
from typing import Any, TypeVar

from onceflow.schemas import Event, WorkUnitSubmitted
from onceflow.streams.state import serde

__all__ = [
    "ENVELOPE_FIELDS",
    "caused_by",
    "derive_event_id",
    "idempotency_key_for",
    "payload_digest",
    "restated",
    "submission_event_id",
]

E = TypeVar("E", bound=Event)

#: What the log adds to an event rather than what it says: a payload digest
#: ignores these, so a resend with a new id and time is still "the same".
ENVELOPE_FIELDS = frozenset(
    {"event_id", "event_type", "occurred_at", "causation_id", "schema_version"})


def derive_event_id(causation_id: str, role: str) -> str:
    """A hash of the causing event id and the output's role (32 hex chars).

    Re-deciding the same input after a crash therefore produces events with
    the same ids, which is what lets every consumer dedupe them.
    """
    return hashlib.sha256(f"{causation_id}\x1f{role}".encode()).hexdigest()[:32]


def caused_by(cause: Event, role: str, **fields: Any) -> dict[str, Any]:
    """The envelope of an event `cause` led to: its id derived from the cause and
    the role, the cause's tenant, session, unit and time unless `fields` say
    otherwise, and `causation_id` pointing back at the cause."""
    envelope = {
        "event_id": derive_event_id(cause.event_id, role),
        "occurred_at": cause.occurred_at,
        "tenant_id": cause.tenant_id,
        "execution_session_id": cause.execution_session_id,
        "work_unit_id": cause.work_unit_id,
        "causation_id": cause.event_id,
    }
    envelope.update(fields)
    return envelope


def restated(event: E, role: str, **updates: Any) -> E:
    """An input recorded as a fact: the same body under a derived id, caused by the input."""
    return event.model_copy(update={
        "event_id": derive_event_id(event.event_id, role), "causation_id": event.event_id,
        **updates,
    })


def payload_digest(unit: WorkUnitSubmitted) -> str:
    """What makes two submissions "the same unit": everything but the envelope.

    The scheduler runs a resent unit once when the digests are equal and
    rejects the second when they differ; `submit` derives event ids from it.
    """
    body = unit.model_dump(mode="json", exclude=set(ENVELOPE_FIELDS))
    return hashlib.sha256(serde.dumps(body)).hexdigest()[:32]


def submission_event_id(work_unit_id: str, digest: str) -> str:
    """A submission's event id: one unit with one payload digest always gets the same id."""
    return derive_event_id(work_unit_id, digest)


def idempotency_key_for(work_unit_id: str) -> str:
    """Stable across attempts: a `token` tool that honours it applies the effect once."""
    return hashlib.sha256(f"onceflow-idem\x1f{work_unit_id}".encode()).hexdigest()[:32]
