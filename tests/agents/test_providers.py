"""LLM providers: the deterministic stub, and the OpenAI-compatible one against a local server."""

from __future__ import annotations

import email.utils
import time
from collections.abc import Iterator
from decimal import Decimal

import pytest

from onceflow.agents import (
    OpenAICompatibleProvider,
    ProviderError,
    StubProvider,
    provider_from_settings,
)
from onceflow.agents._impl.providers import retry_after_ms
from onceflow.settings import AgentSettings
from tests.agents.fixtures import ChatServer


@pytest.fixture
def chat_server() -> Iterator[ChatServer]:
    server = ChatServer()
    yield server
    server.close()


def test_stub_is_deterministic_and_counts_a_quarter_token_per_char() -> None:
    stub = StubProvider()
    a = stub.complete("x" * 41, None, None)
    assert a == stub.complete("x" * 41, None, None)
    assert a.tokens_in == 11 and a.total_tokens == a.tokens_in + a.tokens_out
    assert stub.complete("hello", "m", 5).tokens_out == 5
    assert stub.estimated_cost(a) == Decimal(a.total_tokens) * Decimal("0.002") / 1000


def test_openai_provider_reads_usage_from_a_chat_completions_server(
    chat_server: ChatServer,
) -> None:
    provider = OpenAICompatibleProvider(chat_server.url, "sk-test", "small-model", 5.0,
                                        Decimal("0.01"))
    result = provider.complete("one two three", None, None)
    assert result.provider == "openai" and result.model == "small-model"
    assert (result.tokens_in, result.tokens_out) == (3, 4)
    assert result.text == "echo: one two three"
    assert provider.estimated_cost(result) == Decimal("0.000070")
    request = chat_server.requests[0]
    assert request["path"] == "/v1/chat/completions"
    assert request["auth"] == "Bearer sk-test"
    assert request["body"]["messages"] == [{"role": "user", "content": "one two three"}]


@pytest.mark.parametrize(("status", "code"), [(500, "network_transient"),
                                              (429, "provider_backoff"),
                                              (503, "provider_backoff"),
                                              (400, "provider_rejected")])
def test_openai_errors_map_to_error_classes(chat_server: ChatServer, status: int,
                                            code: str) -> None:
    chat_server.fail_with = status
    provider = OpenAICompatibleProvider(chat_server.url, "k", "m", 5.0, Decimal("0.01"))
    with pytest.raises(ProviderError) as err:
        provider.complete("hi", None, None)
    assert err.value.code == code


def test_unreachable_server_is_a_transient_error() -> None:
    provider = OpenAICompatibleProvider("http://127.0.0.1:1/v1", "k", "m", 2.0, Decimal("0"))
    with pytest.raises(ProviderError) as err:
        provider.complete("hi", None, None)
    assert err.value.code == "network_transient"


def test_openai_provider_without_a_key_says_how_to_set_one() -> None:
    with pytest.raises(ValueError, match="ONCEFLOW_AGENT__LLM_API_KEY"):
        provider_from_settings(AgentSettings(llm_provider="openai"))


@pytest.mark.parametrize(("headers", "wait_ms"), [
    ({"retry-after": "2"}, 2000), ({"retry-after": "0.5"}, 500),
    ({"retry-after-ms": "1500", "retry-after": "9"}, 1500), ({}, None),
    ({"retry-after": "soon"}, None),
])
def test_a_429_says_how_long_the_provider_asked_to_wait(
        chat_server: ChatServer, headers: dict[str, str], wait_ms: int | None) -> None:
    chat_server.fail_with = 429
    chat_server.fail_headers = headers
    provider = OpenAICompatibleProvider(chat_server.url, "k", "m", 5.0, Decimal("0.01"))
    with pytest.raises(ProviderError) as err:
        provider.complete("hi", None, None)
    assert err.value.code == "provider_backoff" and err.value.retry_after_ms == wait_ms


def test_retry_after_as_an_http_date_counts_from_now() -> None:
    later = email.utils.formatdate(time.time() + 30, usegmt=True)
    wait = retry_after_ms({"retry-after": later})
    assert wait is not None and 28_000 <= wait <= 30_000
