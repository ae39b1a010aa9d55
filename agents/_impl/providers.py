"""LLM providers behind one interface: a deterministic stub and an OpenAI-compatible one."""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from decimal import Decimal
from typing import Protocol

from onceflow.agents.settings import AgentSettings
from onceflow.schemas import estimated_input_tokens, estimated_output_tokens, quantize_money

__all__ = [
    "LlmProvider",
    "LlmResult",
    "OpenAICompatibleProvider",
    "ProviderError",
    "StubProvider",
    "provider_from_settings",
]


@dataclass(frozen=True)
class LlmResult:
    text: str
    tokens_in: int
    tokens_out: int
    latency_ms: int
    provider: str
    model: str

    @property
    def total_tokens(self) -> int:
        return self.tokens_in + self.tokens_out


class ProviderError(Exception):
    """A failed call, with an error class the scheduler's retry rules understand."""

    def __init__(self, message: str, code: str = "network_transient") -> None:
        super().__init__(message)
        self.code = code


class LlmProvider(Protocol):
    name: str

    def complete(self, prompt: str, model: str | None, max_tokens: int | None) -> LlmResult: ...

    def estimated_cost(self, result: LlmResult) -> Decimal: ...


class _PerThousand:
    usd_per_1k: Decimal

    def estimated_cost(self, result: LlmResult) -> Decimal:
        return quantize_money(Decimal(result.total_tokens) * self.usd_per_1k / 1000)


class StubProvider(_PerThousand):
    """Deterministic, no network: tokens by the estimate billing prices budgets with."""

    name = "stub"

    def __init__(self, usd_per_1k: Decimal = Decimal("0.002"), model: str = "stub-1") -> None:
        self.usd_per_1k = usd_per_1k
        self.model = model

    def complete(self, prompt: str, model: str | None, max_tokens: int | None) -> LlmResult:
        tokens_in = estimated_input_tokens(prompt)
        tokens_out = estimated_output_tokens(prompt, max_tokens)
        digest = hashlib.sha256(prompt.encode()).hexdigest()
        return LlmResult(f"stub:{digest[:16]}", tokens_in, tokens_out, 0, self.name,
                         model or self.model)


class OpenAICompatibleProvider(_PerThousand):
    """Any server that speaks the chat-completions API, through the `openai` SDK."""

    name = "openai"

    def __init__(self, base_url: str | None, api_key: str, model: str, timeout_s: float,
                 usd_per_1k: Decimal) -> None:
        import openai

        self._openai = openai
        self.client = openai.OpenAI(base_url=base_url, api_key=api_key, timeout=timeout_s,
                                    max_retries=0)
        self.model = model
        self.usd_per_1k = usd_per_1k

    def complete(self, prompt: str, model: str | None, max_tokens: int | None) -> LlmResult:
        started = time.perf_counter()
        try:
            response = self.client.chat.completions.create(
                model=model or self.model,
                messages=[{"role": "user", "content": prompt}],
                max_tokens=max_tokens if max_tokens else self._openai.omit,
            )
        except (self._openai.APIConnectionError, self._openai.APITimeoutError) as exc:
            raise ProviderError(f"{type(exc).__name__}: {exc}", "network_transient") from exc
        except self._openai.RateLimitError as exc:
            raise ProviderError(f"rate limited: {exc}", "admission_reject") from exc
        except self._openai.APIStatusError as exc:
            code = "network_transient" if exc.status_code >= 500 else "provider_rejected"
            raise ProviderError(f"HTTP {exc.status_code}: {exc.message}", code) from exc
        latency = int((time.perf_counter() - started) * 1000)
        usage = response.usage
        text = response.choices[0].message.content or "" if response.choices else ""
        return LlmResult(
            text=text,
            tokens_in=usage.prompt_tokens if usage else 0,
            tokens_out=usage.completion_tokens if usage else 0,
            latency_ms=latency, provider=self.name, model=response.model or model or self.model,
        )


def provider_from_settings(cfg: AgentSettings, name: str | None = None) -> LlmProvider:
    which = name or cfg.llm_provider
    price = Decimal(cfg.llm_usd_per_1k_tokens)
    if which == "stub":
        return StubProvider(price)
    if which == "openai":
        key = cfg.llm_api_key.get_secret_value() if cfg.llm_api_key else None
        if not key:
            raise ValueError(
                "the openai provider needs an API key: set ONCEFLOW_AGENT__LLM_API_KEY "
                "(and ONCEFLOW_AGENT__LLM_BASE_URL for a compatible server)")
        return OpenAICompatibleProvider(cfg.llm_base_url, key, cfg.llm_model, cfg.llm_timeout_s,
                                        price)
    raise ValueError(f"unknown LLM provider {which!r}: use stub or openai")
