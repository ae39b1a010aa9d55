"""LLM providers behind one interface: a deterministic stub and an OpenAI-compatible one."""

from __future__ import annotations

import email.utils
import hashlib
import time
from collections.abc import Mapping
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
    "retry_after_ms",
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
    """A failed call, with an error class the scheduler's retry rules understand.

    `provider_backoff` (429, 503) carries how long the provider asked to wait,
    when it said (`Retry-After`); the agent turns it into a time to come back.
    """

    def __init__(self, message: str, code: str = "network_transient",
                 retry_after_ms: int | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.retry_after_ms = retry_after_ms


def retry_after_ms(headers: Mapping[str, str]) -> int | None:
    """How long a 429 / 503 answer asks to wait: `retry-after-ms`, or `retry-after` in
    seconds or as an HTTP date; None when it names no time."""
    value = headers.get("retry-after-ms")
    if value:
        try:
            return max(0, int(float(value)))
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0, int(float(value) * 1000))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0, int((when.timestamp() - time.time()) * 1000))


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
        except self._openai.APIStatusError as exc:
            if exc.status_code in (429, 503):  # RateLimitError is the 429 case
                raise ProviderError(f"HTTP {exc.status_code}, come back later: {exc.message}",
                                    "provider_backoff",
                                    retry_after_ms(exc.response.headers)) from exc
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
