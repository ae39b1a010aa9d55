"""Flow control (`ONCEFLOW_LIMITS__*`): units at once and requests / tokens per minute in each
scope, and whether session budgets are held."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from onceflow.streams.types import SettingsGroup

__all__ = ["LimitsSettings"]


class LimitsSettings(SettingsGroup):
    """Concurrency limits per scope: global, tenant, session, provider, model, tool (unset: no limit)."""

    global_concurrency: int | None = Field(default=None, ge=1)
    """units running at once in the whole deployment"""
    tenant_concurrency: int | None = Field(default=None, ge=1)
    """units running at once per tenant (each tenant its own count)"""
    session_concurrency: int | None = Field(default=None, ge=1)
    """units running at once per execution session"""
    provider_concurrency: int | None = Field(default=None, ge=1)
    """LLM units running at once per provider"""
    model_concurrency: int | None = Field(default=None, ge=1)
    """LLM units running at once per model"""
    tool_concurrency: int | None = Field(default=None, ge=1)
    """tool units running at once per tool"""
    scopes: dict[str, int] = Field(default_factory=dict)
    """limits of single scopes, overriding the ones above: {"tenant:acme": 50, "provider:openai": 3} (JSON)"""
    requests_per_minute: dict[str, int] = Field(default_factory=dict)
    """requests per minute of logged time, by scope or by scope kind: {"provider": 600, "tenant:acme": 60} (JSON)"""
    tokens_per_minute: dict[str, int] = Field(default_factory=dict)
    """tokens per minute (input plus output weighted by its price against input), by scope or kind (JSON)"""
    limits_file: Path | None = None
    """a JSON file of scope -> concurrency limit, or scope -> {"concurrency", "requests_per_minute", "tokens_per_minute"}; read at start, taking precedence"""
    session_budgets: bool = False
    """hold units against their session's `session_budget_usd` and count them against its `session_limits` (on by itself when any tenant has prepaid credit)"""
    tenant_weights: dict[str, float] = Field(default_factory=dict)
    """weighted fair queuing among waiting requests: a tenant's share (default 1.0) (JSON)"""
    session_idle_ms: int = Field(
        default=30 * 24 * 3600 * 1000, ge=0,
        description="a session whose budget and limits have not moved for this long (logged "
                    "time) is over: its account is forgotten, and a step that comes later "
                    "starts a new one (0: keep every session's account for ever)")
    queue_scan: int = Field(default=256, ge=1)
    """waiting requests a release looks at, in order, for one that now fits"""
