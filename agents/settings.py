"""The node agents' settings (`ONCEFLOW_AGENT__*`): heartbeats, lease safety, the LLM provider."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, SecretStr

from onceflow.streams.settings import StreamsSettings
from onceflow.streams.types import SettingsGroup

__all__ = ["AgentRoleSettings", "AgentSettings"]


class AgentSettings(SettingsGroup):
    """Node agent defaults; `onceflow worker agent` flags override them."""

    heartbeat_interval_ms: int = Field(default=500, ge=10)
    """how often a node agent heartbeats its load and health"""
    lease_safety_ms: int = Field(
        default=500, ge=0, description="no world-changing action starts this close to a lease end"
    )
    queue_limit: int = Field(default=1024, ge=0,
                             description="dispatches a node accepts beyond its running ones, "
                                         "at most")
    queue_horizon_s: float = Field(
        default=2.0, gt=0,
        description="a node asks for as much queued work as it finished in this many seconds "
                    "(at least twice its concurrency), so long units do not wait out their "
                    "leases in its queue",
    )
    handler_modules: list[str] = Field(default_factory=list,
                                       description="modules imported to register handlers")
    drain_timeout_s: float = Field(default=120.0, gt=0,
                                   description="a draining agent stops after this even if "
                                               "claimed work is still outstanding")
    llm_provider: Literal["stub", "openai"] = "stub"
    """stub (deterministic, offline) or openai (any OpenAI-compatible server)"""
    llm_base_url: str | None = None
    """the OpenAI-compatible server's URL"""
    llm_api_key: SecretStr | None = None
    """the OpenAI-compatible server's API key"""
    llm_model: str = "gpt-4o-mini"
    """the model used when a unit names none"""
    llm_backoff_ms: int = Field(default=1000, ge=0)
    """how long to leave an LLM scope alone after a 429 or 503 that named no Retry-After"""
    llm_timeout_s: float = 30.0
    """how long one LLM call may take"""
    llm_usd_per_1k_tokens: str = "0.002000"
    """the provider's estimated cost per 1K tokens, reported on invocations (billing prices from the price book)"""


class AgentRoleSettings(StreamsSettings):
    """What a node agent runs with: the shared settings and the agents' group."""

    agent: AgentSettings = Field(default_factory=AgentSettings)

    @property
    def default_llm_provider(self) -> str:
        return self.agent.llm_provider
