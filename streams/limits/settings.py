"""Concurrency limits (`ONCEFLOW_LIMITS__*`): how many units may run at once in each scope."""

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
    limits_file: Path | None = None
    """a JSON file of scope -> limit, read at start and taking precedence over `scopes`"""
    tenant_weights: dict[str, float] = Field(default_factory=dict)
    """weighted fair queuing among waiting requests: a tenant's share (default 1.0) (JSON)"""
    queue_scan: int = Field(default=256, ge=1)
    """waiting requests a release looks at, in order, for one that now fits"""
