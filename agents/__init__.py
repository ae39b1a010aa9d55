"""Node agents: dispatch intake, the claim handshake, executors, heartbeats.

Register your own work with `register_handler` (cpu) or `register_tool`
(world-changing, optionally with a readback), and run an agent with
`onceflow worker agent`.
"""

from onceflow.agents._impl.agent import AGENT_VERSION, NodeAgent
from onceflow.agents._impl.handlers import (
    HandlerError,
    RetryableError,
    TaskContext,
    Tool,
    handler,
    lookup_handler,
    lookup_tool,
    register_handler,
    register_tool,
)
from onceflow.agents._impl.providers import (
    LlmProvider,
    LlmResult,
    OpenAICompatibleProvider,
    ProviderError,
    StubProvider,
    provider_from_settings,
)
from onceflow.agents.settings import AgentSettings

__all__ = [
    "AGENT_VERSION",
    "AgentSettings",
    "HandlerError",
    "LlmProvider",
    "LlmResult",
    "NodeAgent",
    "OpenAICompatibleProvider",
    "ProviderError",
    "RetryableError",
    "StubProvider",
    "TaskContext",
    "Tool",
    "handler",
    "lookup_handler",
    "lookup_tool",
    "provider_from_settings",
    "register_handler",
    "register_tool",
]
