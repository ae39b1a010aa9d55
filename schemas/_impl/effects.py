"""What a unit's effect label promises, and which kinds can keep the promise: one rule.

A `WORLD_MUTATING` unit, whatever its kind, records `effect.staged` before it
acts; an attempt that staged and then ended without a report is retried only
when its idempotency class makes a retry safe, and otherwise waits for an
operator. The scheduler, the agent and every submitting surface ask these
functions, so the rule is written once.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from onceflow.schemas._impl.reasons import RejectionReason
from onceflow.schemas._impl.types import EffectLabel, IdempotencyClass, WorkKind

if TYPE_CHECKING:
    from onceflow.schemas._impl.events import WorkUnitSubmitted

__all__ = ["RETRY_SAFE_CLASSES", "effect_refusal", "retry_is_safe", "stages_effect",
           "submission_refusal"]

#: idempotency classes under which running a staged effect again cannot apply it twice:
#: `token` (the other side dedupes on the unit's idempotency key) and `readback` (the
#: tool reads back whether the effect already happened, and commits from that)
RETRY_SAFE_CLASSES: frozenset[IdempotencyClass] = frozenset({"token", "readback"})


def stages_effect(effect: EffectLabel) -> bool:
    """Whether an attempt records `effect.staged` before it acts (any kind)."""
    return effect == "WORLD_MUTATING"


def retry_is_safe(effect: EffectLabel, idempotency_class: IdempotencyClass,
                  staged: bool) -> bool:
    """Whether an attempt that ended without a report may simply run again: nothing of a
    world-mutating effect was staged yet, or its idempotency class makes a rerun safe."""
    return not (stages_effect(effect) and staged
                and idempotency_class not in RETRY_SAFE_CLASSES)


def effect_refusal(kind: WorkKind, effect: EffectLabel,
                   idempotency_class: IdempotencyClass) -> str | None:
    """Why a unit of this kind cannot keep its label's promise (None: it can).

    The reason says what to submit instead; the scheduler refuses such a unit at
    admission (`effect_unsupported`) and the client and CLI before it is sent.
    """
    if not stages_effect(effect):
        return None
    if kind == "input":
        return ("an input step is answered by a person and acts on nothing, so it cannot be "
                "WORLD_MUTATING: label it PURE, and make the action a tool step that "
                "depends on it")
    if kind == "llm_pod" and idempotency_class == "token":
        return ("idempotency class 'token' needs the other side to dedupe on the unit's "
                "idempotency key, and the LLM providers send none: use class 'none' (an "
                "operator decides after a crash), or make the world-changing part a tool step")
    if idempotency_class == "readback" and kind != "tool":
        return (f"idempotency class 'readback' needs a tool that reads back whether its "
                f"effect happened, and a {kind} unit has none: register it as a tool with a "
                "readback (register_tool) and submit kind tool, or use class 'token' (the "
                "unit's idempotency key deduped by the other side) or 'none' (an operator "
                "decides after a crash)")
    return None


def submission_refusal(unit: WorkUnitSubmitted) -> tuple[RejectionReason, str] | None:
    """Why a submission can never run, whatever the cluster does (None: it may).

    The scheduler rejects such a unit at admission with the code; the client, the CLI
    and the API refuse it before sending with the same message.
    """
    if unit.work_unit_id in unit.depends_on:
        return ("depends_on_cycle",
                f"work unit {unit.work_unit_id} depends on itself: remove it from depends_on")
    refusal = effect_refusal(unit.kind, unit.effect, unit.idempotency_class)
    if refusal is not None:
        return "effect_unsupported", f"work unit {unit.work_unit_id}: {refusal}"
    return None
