"""Rate limits in requests and tokens per minute of logged time: requests are spaced, never
stormed, and a token estimate is corrected by the real usage."""

from __future__ import annotations

from onceflow.streams.limits import LimitsSettings, ScopeLimits
from tests.streams.limits.fixtures import T0, LimiterHarness, charged, request, settled

P = ["provider:openai"]


def test_requests_past_a_minutes_worth_get_their_turn_spaced_by_the_rate() -> None:
    h = LimiterHarness(rpm={"provider": 3})
    grants = h.grants(h.feed(*(request(f"u{i}", P) for i in range(5))))
    assert [g.not_before for g in grants] == [0, 0, 0, T0 + 20_000, T0 + 40_000]
    assert grants[-1].rate_levels == {"rpm:provider:openai": -2.0}


def test_a_window_refills_with_logged_time_so_a_request_a_minute_later_goes_at_once() -> None:
    h = LimiterHarness(rpm={"provider:openai": 3})
    h.feed(*(request(f"u{i}", P) for i in range(3)))
    (late,) = h.grants(h.feed(request("late", P, at=T0 + 60_000)))
    assert late.not_before == 0


def test_tokens_weigh_output_by_its_price_and_the_real_usage_corrects_the_estimate() -> None:
    h = LimiterHarness(tpm={"provider:openai": 1000})
    (a,) = h.grants(h.feed(request("a", P, tokens=600)))
    (b,) = h.grants(h.feed(request("b", P, tokens=600)))
    assert (a.not_before, b.not_before) == (0, T0 + 12_000)  # 200 short at 1000 a minute
    assert b.rate_levels == {"tpm:provider:openai": -200.0}
    # a used 100 in and 50 out; output costs 4x input, so 300 of its 600 estimate
    (fix,) = h.feed(charged("a", "0.0003", tokens_in=100, tokens_out=50))
    assert fix.tokens_used == 300  # type: ignore[attr-defined]
    assert fix.rate_levels == {"tpm:provider:openai": 100.0}  # type: ignore[attr-defined]
    # the estimate comes back once: a second invocation of a takes only its own use
    (again,) = h.feed(charged("a", "0.0001", at=T0 + 1, tokens_in=40, tokens_out=0))
    assert again.rate_levels["tpm:provider:openai"] < 100.0  # type: ignore[attr-defined]
    h.feed(settled("a", at=T0 + 2))
    assert h.state.get("r:a") is None


def test_a_request_needs_its_turn_in_every_window_and_waits_for_the_latest() -> None:
    h = LimiterHarness(rpm={"provider:openai": 60, "tenant:acme": 2})
    grants = h.grants(h.feed(*(request(f"u{i}", ["tenant:acme", *P]) for i in range(3))))
    assert [g.not_before for g in grants] == [0, 0, T0 + 30_000]


def test_rate_limits_are_read_from_a_limits_file_entry_with_several_keys(tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "limits.json"
    path.write_text('{"provider:openai": {"concurrency": 3, "tokens_per_minute": 9000},'
                    ' "tenant:acme": 5}')
    limits = ScopeLimits.from_settings(LimitsSettings(limits_file=path))
    assert (limits.limit_of("provider:openai"), limits.tpm_of("provider:openai"),
            limits.rpm_of("provider:openai"), limits.limit_of("tenant:acme")) == (3, 9000, None, 5)
    assert limits.scopes_for(tenant="acme", session="s", kind="llm_pod", provider="openai",
                             model="m", tool=None) == ["tenant:acme", "provider:openai"]


def test_a_limits_file_entry_with_an_unknown_key_is_refused_naming_it(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import pytest

    from onceflow.streams.limits import LimitsFileError

    path = tmp_path / "limits.json"
    path.write_text('{"provider:openai": {"tokens_per_hour": 9000}}')
    with pytest.raises(LimitsFileError, match="unknown keys \\['tokens_per_hour'\\]"):
        ScopeLimits.from_settings(LimitsSettings(limits_file=path))
