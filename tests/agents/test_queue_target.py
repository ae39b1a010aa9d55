"""How much queued work a node asks for: the pure rule, without a broker."""

from __future__ import annotations

from onceflow.agents._impl.agent import queue_target


def test_before_its_first_unit_a_node_asks_for_a_modest_queue() -> None:
    assert queue_target(4, None, [], 0.0, 2.0, 1024) == 64


def test_the_run_time_alone_sets_the_queue_while_nothing_has_waited() -> None:
    # 4 slots, 10 ms a unit: 400 units/s, 2 s of them
    assert queue_target(4, 0.01, [], 100.0, 2.0, 1024) == 800
    assert queue_target(4, 0.0001, [], 100.0, 2.0, 1024) == 1024  # at most the limit
    assert queue_target(4, 10.0, [], 100.0, 2.0, 1024) == 8  # at least twice the slots


def test_the_rate_reached_while_units_waited_caps_what_the_run_time_suggests() -> None:
    """Runs of 10 ms suggest 400 units/s; finishing one every 62.5 ms while others waited
    says 16 units/s (claims, reports, a busy machine): the queue is 2 s of that."""
    done = [100.0 + 0.0625 * i for i in range(20)]
    assert queue_target(4, 0.01, done, done[-1] + 0.1, 2.0, 1024) == 32


def test_an_old_or_short_record_of_waiting_is_not_used() -> None:
    done = [100.0 + 0.0625 * i for i in range(20)]
    assert queue_target(4, 0.01, done, done[-1] + 6.0, 2.0, 1024) == 800  # 6 s ago
    assert queue_target(4, 0.01, done[:5], done[4], 2.0, 1024) == 800  # five only
