"""One event per meaning for failures (schema release 6): what releases before 6 wrote as
`workunit.failed` for every failed attempt decodes, from its old bytes, as its meaning."""

from __future__ import annotations

import io
import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from fastavro import parse_schema, schemaless_writer

from onceflow.schemas import (
    SINGLE_OBJECT_MARKER,
    SingleObjectCodec,
    WorkUnitAttemptFailed,
    WorkUnitAttemptStopped,
    WorkUnitFailed,
    avro_fingerprint,
    schema_dir,
)

RELEASED = Path(schema_dir()).parent / "released"


def old_bytes(version: str, **fields: Any) -> bytes:
    """A `workunit.failed` record as a writer of `version` wrote it: its own schema, bytes."""
    schema = json.loads((RELEASED / version / "workunit.failed.avsc").read_text())
    record = {"event_id": "e1", "event_type": "workunit.failed", "occurred_at": 1000,
              "tenant_id": "acme", "execution_session_id": "s1", "work_unit_id": "wu-1",
              "causation_id": "c1", "schema_version": int(version[1:]),
              "selected_node_id": "n1", "attempt_index": 2, "correlation_id": None,
              "error_code": "x", "error_reason": "why", "retryable": False, "final": False,
              "incarnation": "i1", "reported_by_scheduler": False, "retry_at": 0,
              "provider": "", "model": "", "cpu_seconds": "0.250000"}
    record.update(fields)
    names = {f["name"] for f in schema["fields"]}
    buf = io.BytesIO()
    schemaless_writer(buf, parse_schema(schema), {k: v for k, v in record.items()
                                                  if k in names})
    return SINGLE_OBJECT_MARKER + avro_fingerprint(schema) + buf.getvalue()


VERSIONS = sorted(p.name for p in RELEASED.iterdir()
                  if (p / "workunit.failed.avsc").exists() and int(p.name[1:]) < 6)


def _has(version: str, field: str) -> bool:
    schema = json.loads((RELEASED / version / "workunit.failed.avsc").read_text())
    return field in {f["name"] for f in schema["fields"]}


@pytest.mark.parametrize("version", [v for v in VERSIONS if _has(v, "reported_by_scheduler")])
def test_an_old_lease_expiry_reads_as_an_attempt_that_failed(version: str) -> None:
    event = SingleObjectCodec().decode(old_bytes(version, error_code="node_timeout",
                                                 retryable=True, reported_by_scheduler=True))
    assert isinstance(event, WorkUnitAttemptFailed)
    assert (event.lease_expired, event.retryable, event.error_code, event.attempt_index) == (
        True, True, "node_timeout", 2)
    assert (event.event_id, event.work_unit_id, event.selected_node_id) == ("e1", "wu-1", "n1")


@pytest.mark.parametrize("version", VERSIONS)
def test_an_old_agents_report_reads_as_an_attempt_that_failed(version: str) -> None:
    event = SingleObjectCodec().decode(old_bytes(version, error_code="network_transient"))
    assert isinstance(event, WorkUnitAttemptFailed) and not event.lease_expired
    assert event.error_reason == "why"


@pytest.mark.parametrize("version", VERSIONS)
def test_an_old_stop_after_a_cancel_reads_as_a_stopped_attempt(version: str) -> None:
    event = SingleObjectCodec().decode(old_bytes(version, error_code="cancelled"))
    assert isinstance(event, WorkUnitAttemptStopped)
    if _has(version, "cpu_seconds"):
        assert event.cpu_seconds == Decimal("0.25")


@pytest.mark.parametrize("version", VERSIONS)
def test_an_old_final_failure_is_still_the_units_failure(version: str) -> None:
    event = SingleObjectCodec().decode(old_bytes(version, final=True, error_code="handler_error",
                                                 error_reason="non_retryable_error: boom"))
    assert type(event) is WorkUnitFailed and event.final
    assert event.error_reason == "non_retryable_error: boom"


def test_release_6_writes_only_final_failures() -> None:
    failed = WorkUnitFailed(event_id="e", occurred_at=1, error_code="x", final=True)
    assert failed.schema_version == 6
    assert SingleObjectCodec().decode(SingleObjectCodec().encode(failed)) == failed


def test_an_old_agents_report_reaches_the_scheduler_as_a_report() -> None:
    """A failure an agent of release 5 reported, still on the reports topic at the upgrade,
    is decided as the report it is: the attempt failed and is retried."""
    from onceflow.schemas import ClaimGranted, WorkUnitRetryScheduled, WorkUnitScheduled
    from tests.streams.scheduler.fixtures import T0, Harness, heartbeat, submit

    h = Harness()
    h.see(heartbeat("n1"))
    sched = next(f for f in h.feed(submit("wu-1")) if isinstance(f, WorkUnitScheduled))
    grant = h.claim("wu-1", sched.selected_node_id, 1, at=T0 + 1)[0]
    assert isinstance(grant, ClaimGranted)
    report = SingleObjectCodec().decode(old_bytes(
        "v5", occurred_at=T0 + 2, attempt_index=1, selected_node_id=sched.selected_node_id,
        incarnation=grant.incarnation, error_code="network_transient"))
    facts = h.feed(report)
    assert [type(f) for f in facts][:1] == [WorkUnitAttemptFailed]
    assert isinstance(facts[-1], WorkUnitRetryScheduled)
