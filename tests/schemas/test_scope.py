"""A scope is a value with one spelling, printed and parsed in one place."""

from __future__ import annotations

import pytest

from onceflow.billing import session_wallet_id, tenant_wallet_id
from onceflow.schemas import Scope, ScopeError


@pytest.mark.parametrize(("scope", "text"), [
    (Scope.everything(), "global"),
    (Scope.of_tenant("acme"), "tenant:acme"),
    (Scope.of_session("acme", "s1"), "session:acme/s1"),
    (Scope.of_session("acme:eu", "run:7"), "session:acme:eu/run:7"),
    (Scope.of_provider("openai"), "provider:openai"),
    (Scope.of_model("gpt-x"), "model:gpt-x"),
    (Scope.of_tool(None), "tool:effects.append"),
])
def test_each_scope_prints_one_way_and_parses_back(scope: Scope, text: str) -> None:
    assert str(scope) == text
    assert Scope.parse(text) == scope


def test_a_session_wallet_of_an_older_release_names_the_same_session() -> None:
    assert Scope.parse("session:acme:s1") == Scope.of_session("acme", "s1")


def test_wallets_are_named_by_their_scopes() -> None:
    assert tenant_wallet_id("acme") == str(Scope.of_tenant("acme"))
    assert session_wallet_id("acme", "s1") == str(Scope.of_session("acme", "s1"))


@pytest.mark.parametrize("text", ["", "tenant", "tenant:", "planet:mars", "session:acme",
                                  "global:x"])
def test_what_is_not_a_scope_is_refused_saying_how_to_spell_one(text: str) -> None:
    with pytest.raises(ScopeError, match="session:<tenant>/<session>"):
        Scope.parse(text)
