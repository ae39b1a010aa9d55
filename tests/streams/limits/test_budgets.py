"""Budgets held before the call: a unit's maximum cost is held until the ledger bills it."""

from __future__ import annotations

from decimal import Decimal

from onceflow.streams.limits import Limiter
from onceflow.streams.runtime import fingerprint_items
from onceflow.streams.state import MemoryState
from tests.streams.limits.fixtures import (
    T0,
    LimiterHarness,
    charged,
    release,
    request,
    settled,
)

HOLD = Decimal("0.4")


def budgeted(wu: str, at: int = T0, hold: Decimal = HOLD, **fields: object):  # type: ignore[no-untyped-def]
    return request(wu, [], at=at, hold_usd=hold, **fields)


def test_a_unit_is_held_against_its_tenants_credit_and_granted_while_it_fits() -> None:
    h = LimiterHarness(credits={"acme": "1"})
    facts = h.feed(budgeted("a"), budgeted("b", at=T0 + 1))
    assert h.granted(facts) == ["a", "b"]
    assert [g.held_usd for g in h.grants(facts)] == [HOLD, HOLD]
    assert h.grants(facts)[0].budget_scopes == ["tenant:acme"]
    assert h.budget("tenant:acme") == {"reserved": "0.800000", "charged": "0.000000"}


def test_a_unit_that_fits_only_once_holds_settle_waits_and_is_granted_when_one_does() -> None:
    h = LimiterHarness(credits={"acme": "1"})
    h.feed(budgeted("a"), budgeted("b", at=T0 + 1))
    (queued,) = h.queued(h.feed(budgeted("c", at=T0 + 2)))
    assert queued.scope == "budget:tenant:acme"
    assert "0.400000 USD to hold, 0.200000 USD available" in queued.detail
    assert "held for running units 0.800000" in queued.detail
    # a's charge counts first, then its settlement ends its hold: c now fits
    assert h.granted(h.feed(charged("a", "0.1", at=T0 + 10))) == []
    facts = h.feed(settled("a", at=T0 + 11))
    assert h.granted(facts) == ["c"]
    assert h.budget("tenant:acme") == {"reserved": "0.800000", "charged": "0.100000"}


def test_a_unit_whose_cost_exceeds_what_charges_left_is_denied_with_the_numbers() -> None:
    h = LimiterHarness(credits={"acme": "1"})
    h.feed(charged("x", "0.7"))
    (denied,) = h.denied(h.feed(budgeted("a", at=T0 + 1)))
    assert denied.reason_code == "BUDGET_EXCEEDED"
    assert (denied.budget_usd, denied.charged_usd, denied.hold_usd) == (
        Decimal("1"), Decimal("0.7"), HOLD)
    assert "may cost up to 0.400000 USD" in denied.reason
    assert "0.300000 USD of its budget 1.000000 USD is left" in denied.reason
    # a unit that costs nothing is still refused once the credit is spent
    h.feed(charged("y", "0.3", at=T0 + 2))
    assert h.denied(h.feed(budgeted("b", at=T0 + 3, hold=Decimal("0"))))


def test_a_retry_keeps_its_hold_and_takes_no_second_one() -> None:
    h = LimiterHarness(credits={"acme": "1"}, scopes={"global": 5})
    h.feed(request("a", ["global"], hold_usd=HOLD))
    h.feed(release("a", at=T0 + 5, reason="attempt_ended"))
    again = h.grants(h.feed(request("a", ["global"], at=T0 + 6, attempt=2, hold_usd=HOLD)))
    assert again and again[0].held_usd == 0
    assert h.budget("tenant:acme") == {"reserved": "0.400000", "charged": "0.000000"}
    h.feed(settled("a", at=T0 + 9))
    assert h.budget("tenant:acme") == {"reserved": "0.000000", "charged": "0.000000"}
    assert h.state.get("r:a") is None


def test_a_session_budget_is_the_first_submissions_and_binds_the_sessions_units() -> None:
    h = LimiterHarness()
    h.feed(budgeted("a", session_budget_usd=Decimal("1")))
    # a later unit naming a bigger budget does not raise it
    (queued,) = h.queued(h.feed(budgeted("b", at=T0 + 1, session_budget_usd=Decimal("9")),
                                budgeted("c", at=T0 + 2, session_budget_usd=Decimal("9"))))
    assert queued.work_unit_id == "c" and queued.scope == "budget:session:acme/s1"
    assert h.budget("session:acme/s1")["budget"] == "1.000000"


def test_charges_of_tenants_without_credit_hold_nothing_and_deny_nothing() -> None:
    h = LimiterHarness(credits={"acme": "1"})
    assert h.feed(charged("x", "5", tenant="other")) == []  # no account kept for it
    facts = h.feed(request("b", ["global"], tenant="other"))
    assert not h.denied(facts)


def test_two_hundred_units_against_a_credit_for_twenty_charge_at_most_the_credit() -> None:
    """Each unit may cost 0.05 and costs 0.04; the credit pays 1.00: holds keep every grant
    inside it, however the grants, charges and settlements interleave."""
    h = LimiterHarness(credits={"acme": "1"})
    at = T0
    granted: list[str] = []
    for i in range(200):
        at += 1
        facts = h.feed(budgeted(f"u{i}", at=at, hold=Decimal("0.05")))
        granted += h.granted(facts)
        if i % 3 == 2 and granted:  # settle the oldest granted unit now and then
            done = granted.pop(0)
            granted += h.granted(h.feed(charged(done, "0.04", at=at), settled(done, at=at)))
    while granted:  # settling one may grant a waiting one
        at += 1
        done = granted.pop(0)
        granted += h.granted(h.feed(charged(done, "0.04", at=at), settled(done, at=at)))
    total = Decimal(h.budget("tenant:acme")["charged"])
    assert total <= Decimal("1")
    assert total >= Decimal("0.95")  # the credit was used, not refused early
    # every unit was granted or denied: none waits for a budget that cannot pay it
    assert len(h.denied(h.facts())) + len(h.grants(h.facts())) == 200
    assert h.state.get("waiting") is None
    assert h.budget("tenant:acme")["reserved"] == "0.000000"


def test_replaying_the_limiters_facts_gives_the_live_state() -> None:
    h = LimiterHarness(credits={"acme": "1"}, tpm={"provider:openai": 1000})
    h.feed(budgeted("a", tokens=300), request("b", ["provider:openai"], hold_usd=HOLD,
                                                tokens=500),
           budgeted("c", at=T0 + 1), budgeted("d", at=T0 + 2),
           charged("b", "0.2", at=T0 + 5, tokens_in=100, tokens_out=50),
           settled("b", at=T0 + 6), charged("a", "0.3", at=T0 + 7), settled("a", at=T0 + 8))
    replayed = MemoryState()
    limiter: Limiter = h.limiter
    for fact in h.facts():
        limiter.evolve(replayed, fact)
    assert fingerprint_items(replayed.raw_items()) == fingerprint_items(h.state.raw_items())
    assert h.state.get("rb:tpm:provider:openai") is not None  # the windows were replayed too


def test_a_fenced_attempts_tokens_do_not_end_a_hold_that_waits_for_the_accepted_ones(
) -> None:
    """Found by the simulation: attempt 1's tokens (leakage) came before the settlement of
    attempt 2 and counted as "the call's tokens", so the hold ended before attempt 2's
    tokens were billed."""
    h = LimiterHarness(credits={"acme": "1"})
    h.feed(budgeted("a", kind="llm_pod"))
    # attempt 1 was fenced: its tokens are leakage; then the unit settles (attempt 2)
    h.feed(charged("a", "0.2", at=T0 + 1, billed=False, tokens_in=100, tokens_out=50),
           settled("a", at=T0 + 2))
    assert h.state.get("r:a") is not None  # still held: attempt 2's tokens are to come
    assert h.budget("tenant:acme") == {"reserved": "0.400000", "charged": "0.000000"}
    h.feed(charged("a", "0.3", at=T0 + 3, tokens_in=100, tokens_out=50))
    assert h.state.get("r:a") is None
    assert h.budget("tenant:acme") == {"reserved": "0.000000", "charged": "0.300000"}


def test_an_llm_unit_settled_before_its_tokens_are_billed_keeps_its_hold_until_they_are(
) -> None:
    """The call's tokens come on another topic: a settlement that overtakes them must not
    free the hold, or a grant could spend the same credit twice."""
    h = LimiterHarness(credits={"acme": "1"})
    h.feed(budgeted("a", kind="llm_pod"))
    h.feed(charged("a", "0.001", at=T0 + 1), settled("a", at=T0 + 2))  # CPU, then settled
    assert h.budget("tenant:acme") == {"reserved": "0.400000", "charged": "0.001000"}
    facts = h.feed(charged("a", "0.3", at=T0 + 3, tokens_in=100, tokens_out=50))
    assert h.budget("tenant:acme") == {"reserved": "0.000000", "charged": "0.301000"}
    assert h.state.get("r:a") is None and facts
    # in the usual order (tokens first) the settlement ends the hold at once
    h.feed(budgeted("b", at=T0 + 4, kind="llm_pod"))
    h.feed(charged("b", "0.2", at=T0 + 5, tokens_in=10, tokens_out=10), settled("b", T0 + 6))
    assert h.state.get("r:b") is None
    assert h.budget("tenant:acme") == {"reserved": "0.000000", "charged": "0.501000"}


def test_a_sessions_account_is_forgotten_once_idle_a_horizon_and_holding_nothing() -> None:
    horizon = 160_000
    h = LimiterHarness(horizon_ms=horizon)
    h.feed(budgeted("a", session_budget_usd=Decimal("1"), session="s1"),
           budgeted("b", session_budget_usd=Decimal("1"), session="s2"))
    h.feed(charged("a", "0.2", at=T0 + 5, session="s1"), settled("a", at=T0 + 6, session="s1"))
    assert h.budget("session:acme/s1") and h.budget("session:acme/s2")
    h.feed(budgeted("c", at=T0 + horizon + 20_000, session="s3"))
    retired = [s for f in h.facts() if f.event_type == "processor.state.retired"
               for s in f.sessions]  # type: ignore[attr-defined]
    # s1 is settled and idle; s2 still holds b's maximum cost, so it is kept
    assert retired == ["acme/s1"]
    assert not h.budget("session:acme/s1") and h.budget("session:acme/s2")
    replayed = MemoryState()
    for fact in h.facts():
        h.limiter.evolve(replayed, fact)
    assert fingerprint_items(replayed.raw_items()) == fingerprint_items(h.state.raw_items())


def test_a_session_that_moves_in_the_decision_that_finds_it_idle_is_kept() -> None:
    horizon = 160_000
    h = LimiterHarness(horizon_ms=horizon)
    h.feed(budgeted("a", session_budget_usd=Decimal("1"), session="s1"))
    h.feed(charged("a", "0.2", at=T0 + 5, session="s1"), settled("a", at=T0 + 6, session="s1"))
    # idle a horizon, and back in the very input that looks: not forgotten
    h.feed(budgeted("b", at=T0 + horizon + 20_000, session="s1"))
    assert not [f for f in h.facts() if f.event_type == "processor.state.retired"
                and f.sessions]  # type: ignore[attr-defined]
    assert h.budget("session:acme/s1")["charged"] == "0.200000"
