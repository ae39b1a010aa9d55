"""Building work-unit submissions from CLI flags, a JSON file, or a generator."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from onceflow.schemas import WorkUnitSubmitted, submission_refusal
from onceflow.streams.ids import payload_digest, submission_event_id

__all__ = ["SubmitInputError", "generated_record", "unit_from_file"]


class SubmitInputError(ValueError):
    pass


def unit_from_file(path: Path, overrides: dict[str, Any]) -> WorkUnitSubmitted:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise SubmitInputError(f"{path} does not exist; pass a JSON file with the work unit") from None
    except json.JSONDecodeError as exc:
        raise SubmitInputError(f"{path} is not valid JSON ({exc}); fix the file") from None
    if not isinstance(data, dict):
        raise SubmitInputError(f"{path} must hold one JSON object, got {type(data).__name__}")
    data.update({k: v for k, v in overrides.items() if v is not None})
    return build_unit(data)


def build_unit(data: dict[str, Any]) -> WorkUnitSubmitted:
    data = dict(data)
    data.setdefault("occurred_at", int(time.time() * 1000))
    if "work_unit_id" not in data:
        digest = hashlib.sha256(repr(sorted(data.items())).encode()).hexdigest()[:16]
        data["work_unit_id"] = f"wu-{digest}"
    data.setdefault("execution_session_id", f"sess:{data['work_unit_id']}")
    data.setdefault("correlation_id", data["execution_session_id"])
    data.setdefault("event_id", "pending")
    try:
        unit = WorkUnitSubmitted.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors()
        )
        raise SubmitInputError(f"the work unit is invalid: {problems}") from None
    refused = submission_refusal(unit)
    if refused is not None:
        raise SubmitInputError(refused[1])
    # Same unit and payload, same event id (a resend is a duplicate); another payload
    # under the same id gets another event id, which the scheduler rejects.
    event_id = submission_event_id(unit.work_unit_id or "", payload_digest(unit))
    return unit.model_copy(update={"event_id": event_id})


def generated_record(
    template: dict[str, Any], digest: str, run_id: str, index: int, now_ms: int
) -> dict[str, Any]:
    """The i-th generated unit as an Avro-ready dict (the fast path of `submit --count`).

    `digest` is the template's `payload_digest`: generated units differ only in
    their ids, and hashing each one would cost more than sending it."""
    wu = f"wu-{run_id}-{index:08d}"
    record = dict(template)
    record["work_unit_id"] = wu
    record["execution_session_id"] = f"sess:{wu}"
    record["correlation_id"] = record["execution_session_id"]
    record["occurred_at"] = now_ms
    record["event_id"] = submission_event_id(wu, digest)
    return record
