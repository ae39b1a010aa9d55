"""Typed builders for the steps of a session: what a unit is, before it is a submission."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from onceflow.schemas import EffectLabel, IdempotencyClass, Priority, WorkKind

__all__ = ["Step"]


@dataclass(frozen=True)
class Step:
    """One unit of work: its id, its kind, what it depends on, and its submission's fields.

    Build it with `Step.cpu`, `Step.llm`, `Step.tool` or `Step.ask` (an input step); `input` bytes
    go to the content store when the step is submitted (`data`).
    """

    work_unit_id: str
    kind: WorkKind
    depends_on: tuple[str, ...] = ()
    #: bytes the step reads (its `input_ref` once stored); an input step's default answer
    data: bytes | None = None
    fields: dict[str, Any] = field(default_factory=dict)

    @staticmethod
    def cpu(work_unit_id: str, *, handler: str | None = None, input: bytes | None = None,
            simulated_ms: int = 0, depends_on: Sequence[str] = (), priority: Priority = "p2",
            max_attempts: int = 5, lease_ms: int = 30_000, **fields: Any) -> Step:
        """A CPU step: a registered handler (`sha256`, ...) or simulated work."""
        return Step(work_unit_id, "cpu", tuple(depends_on), input, {
            "handler": handler, "simulated_ms": simulated_ms, "priority": priority,
            "max_attempts": max_attempts, "lease_ms": lease_ms, **fields})

    @staticmethod
    def llm(work_unit_id: str, *, prompt: str, model: str | None = None,
            max_tokens: int | None = None, depends_on: Sequence[str] = (),
            priority: Priority = "p2", lease_ms: int = 30_000, **fields: Any) -> Step:
        """An LLM call: its prompt, model and the most tokens it may answer with."""
        parameters = dict(fields.pop("parameters", {}))
        if max_tokens is not None:
            parameters["max_tokens"] = str(max_tokens)
        return Step(work_unit_id, "llm_pod", tuple(depends_on), None, {
            "prompt": prompt, "model": model, "priority": priority, "lease_ms": lease_ms,
            "parameters": parameters, **fields})

    @staticmethod
    def tool(work_unit_id: str, *, handler: str, effect: EffectLabel = "WORLD_MUTATING",
             idempotency_class: IdempotencyClass = "token", requires_approval: bool = False,
             parameters: dict[str, str] | None = None, input: bytes | None = None,
             depends_on: Sequence[str] = (), lease_ms: int = 30_000, **fields: Any) -> Step:
        """A tool call; a world-mutating one stages its effect before it acts, and may wait
        for a person's approval first."""
        return Step(work_unit_id, "tool", tuple(depends_on), input, {
            "handler": handler, "effect": effect, "idempotency_class": idempotency_class,
            "requires_approval": requires_approval, "parameters": dict(parameters or {}),
            "lease_ms": lease_ms, **fields})

    @staticmethod
    def ask(work_unit_id: str, *, prompt: str, schema: dict[str, Any] | None = None,
              default: bytes | None = None, timeout_ms: int = 0,
              depends_on: Sequence[str] = ()) -> Step:
        """A question for a person: answered with `Client.answer`, checked against
        `schema` (JSON schema); unanswered by its deadline it takes `default` or fails."""
        parameters = {"schema": json.dumps(schema)} if schema is not None else {}
        return Step(work_unit_id, "input", tuple(depends_on), default, {
            "prompt": prompt, "parameters": parameters, "approval_timeout_ms": timeout_ms})
