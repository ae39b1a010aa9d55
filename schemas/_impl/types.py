"""Field types shared by every event model.

Money travels as a 6-decimal string on the wire (exact, readable in `tail`,
what Krako 2.0's ledger does) and as `Decimal` in Python, so no float ever
touches an amount.
"""

from __future__ import annotations

from decimal import ROUND_HALF_EVEN, Decimal, InvalidOperation
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, PlainSerializer

__all__ = [
    "MONEY_QUANTUM",
    "AdmissionMode",
    "Amount",
    "BreakerBucket",
    "ContentRef",
    "EffectLabel",
    "HealthStatus",
    "IdempotencyClass",
    "Money",
    "PlacementCandidate",
    "Priority",
    "SessionLimitPolicy",
    "SessionLimits",
    "WorkKind",
    "quantize_money",
]

MONEY_QUANTUM = Decimal("0.000001")
#: no amount reaches this (a quadrillion USD); beyond 10**22 the 6-place rounding fails
MONEY_LIMIT = Decimal(10) ** 15
#: the largest integer an Avro long holds: a bound for counts a person types in
AVRO_LONG_MAX = 2**63 - 1

Priority = Literal["critical", "p0", "p1", "p2"]
WorkKind = Literal["cpu", "llm_pod", "tool", "input"]
EffectLabel = Literal["PURE", "READ_ONLY_NONDET", "WORLD_MUTATING"]
IdempotencyClass = Literal["none", "token", "readback", "staged", "at_least_once"]
HealthStatus = Literal["healthy", "degraded", "down", "draining"]
AdmissionMode = Literal["OPEN", "THROTTLED", "CRITICAL"]


def quantize_money(value: Decimal | str | int) -> Decimal:
    """Quantize to 6 places, half-even: the one rounding rule of the ledger."""
    return Decimal(value).quantize(MONEY_QUANTUM, rounding=ROUND_HALF_EVEN)


def _to_decimal(value: object) -> object:
    # Floats are refused: an amount that went through binary floating point
    # has already lost the cent of a millionth we promise to keep.
    if isinstance(value, float):
        raise ValueError("money must be a Decimal, int or decimal string, not float")
    if isinstance(value, str | int):
        try:
            value = Decimal(value)
        except InvalidOperation:
            # A ValueError is what pydantic turns into a ValidationError (and the
            # codec into a dead letter); decimal's own error would escape both.
            raise ValueError(f"{str(value)[:40]!r} is not a decimal amount") from None
    if isinstance(value, Decimal) and not (value.is_finite() and abs(value) < MONEY_LIMIT):
        # Beyond this the 6-place rounding itself fails (28 digits of decimal context).
        raise ValueError(f"{str(value)[:40]!r} is not an amount this ledger keeps "
                         f"(finite, below {MONEY_LIMIT:,} in size)")
    return value


Money = Annotated[
    Decimal,
    BeforeValidator(_to_decimal),
    PlainSerializer(lambda d: format(quantize_money(d), "f"), return_type=str),
]


def _to_amount(value: Any) -> object:
    amount = _to_decimal(value)
    if isinstance(amount, Decimal) and amount < 0:
        raise ValueError(f"{str(amount)[:40]!r} is negative: a cost, price, budget or "
                         "quantity is never below zero")
    return amount


#: Money that is never negative: costs, prices, budgets, holds, seconds (a balance is
#: the only signed amount)
Amount = Annotated[
    Decimal,
    BeforeValidator(_to_amount),
    PlainSerializer(lambda d: format(quantize_money(d), "f"), return_type=str),
]


class ContentRef(BaseModel):
    """A pointer to bytes in the content store; the digest is the address."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    size: int = Field(ge=0)
    media_type: str = "application/octet-stream"


class BreakerBucket(BaseModel):
    """A node's attempts in one bucket of logged time, as its breaker counts them."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    bucket: int = Field(description="logged time // breaker_bucket_ms")
    attempts: int = 0
    failed: int = 0
    timeouts: int = 0


class PlacementCandidate(BaseModel):
    """One node as the scheduler saw it when deciding: the inputs of the choice."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    node_id: str
    score: float
    capacity: float
    load: float
    trust: float
    region: float
    queue_depth: int
    available_concurrency: int
    utilization: float = 0.0
    raw_trust: float = 0.5
    heartbeat_age_ms: int = 0
    node_region: str | None = None


#: what a session does when one of its execution limits is reached: wait in the
#: operator's inbox (paused, nothing lost) or be cancelled
SessionLimitPolicy = Literal["park", "cancel"]


class SessionLimits(BaseModel):
    """A session's execution limits (enact's enforcement), as its first submission set them.

    Each is a most; unset is no limit. Counted by the limiter across every
    scheduler partition: a step is a unit that ran at least once, an attempt
    each run, an LLM call each attempt of an `llm_pod` unit, tokens what the
    ledger billed (input plus output) with what running calls may still use
    held in advance, cost what the ledger charged with the running units'
    maximum held (the session budget), wall time logged time since the
    session's first step was admitted.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_steps: int | None = Field(default=None, ge=1, le=AVRO_LONG_MAX)
    max_attempts: int | None = Field(default=None, ge=1, le=AVRO_LONG_MAX)
    max_llm_calls: int | None = Field(default=None, ge=1, le=AVRO_LONG_MAX)
    max_tokens: int | None = Field(default=None, ge=1, le=AVRO_LONG_MAX)
    max_cost_usd: Amount | None = None
    max_wall_time_ms: int | None = Field(default=None, ge=1, le=AVRO_LONG_MAX)
    on_limit: SessionLimitPolicy = Field(
        default="park", description="park: paused and listed in the inbox until an operator "
        "raises the limit or cancels; cancel: the session is cancelled")
