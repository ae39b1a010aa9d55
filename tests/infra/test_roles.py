"""Members per role as `onceflow up --members` reads them, and the names they get."""

from __future__ import annotations

import pytest

from onceflow.infra.roles import member_names, parse_members


def test_members_are_read_per_role() -> None:
    assert parse_members("scheduler=3, billing=2,trust=2") == {
        "scheduler": 3, "billing": 2, "trust": 2}
    assert parse_members("") == {}


@pytest.mark.parametrize(("text", "says"), [
    ("scheduler", "write ROLE=N"),
    ("agents=3", "write ROLE=N with ROLE one of scheduler, billing, trust, limiter, views"),
    ("scheduler=three", "'three' is not a number of members"),
    ("scheduler=0", "between 1 and 16"),
])
def test_a_bad_members_option_says_what_is_wrong(text: str, says: str) -> None:
    with pytest.raises(ValueError, match=says):
        parse_members(text)


def test_member_names_are_stable_across_restarts() -> None:
    """The first member is named after its role, the others numbered: a member started
    again under its name fences its last incarnation and finds its state again."""
    assert member_names("scheduler", 3) == ["scheduler", "scheduler-2", "scheduler-3"]
    assert member_names("limiter", 1) == ["limiter"]
