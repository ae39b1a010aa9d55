"""LLM providers: the deterministic stub, and the OpenAI-compatible one against a local server."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from onceflow.agents import (
    OpenAICompatibleProvider,
    ProviderError,
    StubProvider,
    provider_from_settings,
)
from onceflow.streams.settings import AgentSettings


class ChatServer:
    """A tiny server that speaks the chat-completions API, counting tokens by words."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.fail_with: int | None = None
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                server.requests.append({"path": self.path, "body": body,
                                        "auth": self.headers.get("Authorization")})
                if server.fail_with:
                    self._reply(server.fail_with, {"error": {"message": "boom", "type": "x"}})
                    return
                prompt = body["messages"][-1]["content"]
                answer = "echo: " + prompt
                self._reply(200, {
                    "id": "chatcmpl-1", "object": "chat.completion", "created": 1,
                    "model": body["model"],
                    "choices": [{"index": 0, "finish_reason": "stop",
                                 "message": {"role": "assistant", "content": answer}}],
                    "usage": {"prompt_tokens": len(prompt.split()),
                              "completion_tokens": len(answer.split()),
                              "total_tokens": len(prompt.split()) + len(answer.split())},
                })

            def _reply(self, code: int, payload: dict[str, Any]) -> None:
                data = json.dumps(payload).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()


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
                                              (429, "admission_reject"),
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
