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
    (Scope.of_session("acme", ""), "session:acme/"),  # a unit without a session
    (Scope.of_tenant(""), "tenant:"),
])
def test_each_scope_prints_one_way_and_parses_back(scope: Scope, text: str) -> None:
    assert str(scope) == text
    assert Scope.parse(text) == scope


def test_a_session_wallet_of_an_older_release_names_the_same_session() -> None:
    assert Scope.parse("session:acme:s1") == Scope.of_session("acme", "s1")


def test_wallets_are_named_by_their_scopes() -> None:
    assert tenant_wallet_id("acme") == str(Scope.of_tenant("acme"))
    assert session_wallet_id("acme", "s1") == str(Scope.of_session("acme", "s1"))


@pytest.mark.parametrize("text", ["", "tenant", "planet:mars", "session:acme", "global:x",
                                  "model"])
def test_what_is_not_a_scope_is_refused_saying_how_to_spell_one(text: str) -> None:
    with pytest.raises(ScopeError, match="session:<tenant>/<session>"):
        Scope.parse(text)


def test_a_wallet_is_whole_across_the_old_and_the_new_spelling_of_its_session() -> None:
    from decimal import Decimal

    from onceflow.billing import Wallet
    from onceflow.schemas import WalletUpdated

    def partial(wid: str, debit: str, n: int) -> WalletUpdated:
        return WalletUpdated(event_id=wid, occurred_at=1, tenant_id="acme",
                             execution_session_id="s1", wallet_id=f"{wid}@0", scope="session",
                             ledger_partition=0, total_debit_usd=Decimal(debit),
                             total_credit_usd=Decimal(0), balance_usd=-Decimal(debit),
                             record_count=n)

    wallets = Wallet.combine([partial("session:acme:s1", "1.5", 3),
                              partial("session:acme/s1", "0.5", 1)])
    assert list(wallets) == ["session:acme/s1"]
    assert (wallets["session:acme/s1"].debit_usd, wallets["session:acme/s1"].record_count) == (
        Decimal("2.0"), 4)
