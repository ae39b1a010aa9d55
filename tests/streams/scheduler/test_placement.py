"""Placement rules: filters, scores, ties, anti-affinity, region, stale trust."""

from __future__ import annotations

import pytest

from onceflow.settings import SchedulerSettings
from onceflow.streams.scheduler import NodeView, PlacementRequest, Streak, place, rank_recorded

CFG = SchedulerSettings()
NOW = 1_000_000


def node(node_id: str, **kw: object) -> NodeView:
    base: dict[str, object] = dict(supported_kinds=("cpu",), available_concurrency=4,
                                   queue_depth=0, utilization=0.0, region="eu",
                                   version="1.0.0", last_seen=NOW)
    base.update(kw)
    return NodeView(node_id=node_id, **base)  # type: ignore[arg-type]


CPU = PlacementRequest("cpu")


def test_score_uses_krako_weights() -> None:
    result = place(PlacementRequest("cpu", region="eu"),
                   [node("a", available_concurrency=3, queue_depth=1, utilization=0.25)],
                   {"a": 0.8}, NOW, Streak(), CFG)
    c = result.selected
    assert c is not None
    assert c.capacity == 0.75 and c.load == 0.75 and c.trust == 0.8 and c.region == 1.0
    assert c.score == pytest.approx(0.35 * 0.75 + 0.30 * 0.75 + 0.25 * 0.8 + 0.10 * 1.0)


def test_equal_scores_rank_by_queue_depth_then_node_id() -> None:
    # Same capacity ratio and load, so equal scores; queue depth decides, then the id.
    nodes = [node("b", available_concurrency=2, queue_depth=2),
             node("a", available_concurrency=4, queue_depth=4),
             node("c", available_concurrency=2, queue_depth=2)]
    result = place(CPU, nodes, {}, NOW, Streak(), CFG)
    assert [c.node_id for c in result.candidates] == ["b", "c", "a"]
    assert result.selected is not None and result.selected.node_id == "b"
    assert result.reason_code == "best_score"


def test_hard_filters_name_their_reasons_in_order() -> None:
    nodes = [
        node("off", enabled=False, health_status="down"),
        node("down", health_status="down"),
        node("drain", health_status="draining"),
        node("llm", supported_kinds=("llm_pod",)),
        node("full", available_concurrency=0),
        node("old", version="0.9.9"),
    ]
    result = place(PlacementRequest("cpu", min_runtime_version="1.0.0"), nodes, {}, NOW,
                   Streak(), CFG)
    assert result.selected is None and result.reason_code == "no_eligible_node"
    assert result.filter_counts == {"disabled": 1, "health_status": 2, "unsupported_kind": 1,
                                    "insufficient_concurrency": 1, "runtime_version": 1}


def test_degraded_nodes_stay_eligible() -> None:
    result = place(CPU, [node("a", health_status="degraded")], {}, NOW, Streak(), CFG)
    assert result.selected is not None


def test_version_comparison_is_numeric() -> None:
    result = place(PlacementRequest("cpu", min_runtime_version="1.9.0"),
                   [node("a", version="1.10.0")], {}, NOW, Streak(), CFG)
    assert result.selected is not None


def test_region_match_beats_other_region_and_no_region_is_neutral() -> None:
    nodes = [node("far", region="us"), node("near", region="eu")]
    assert place(PlacementRequest("cpu", region="eu"), nodes, {}, NOW, Streak(),
                 CFG).selected.node_id == "near"  # type: ignore[union-attr]
    neutral = place(CPU, nodes, {}, NOW, Streak(), CFG)
    assert {c.region for c in neutral.candidates} == {0.5}


def test_stale_heartbeat_halves_trust() -> None:
    stale = NOW - CFG.stale_heartbeat_ms - 1
    nodes = [node("fresh"), node("stale", last_seen=stale)]
    result = place(CPU, nodes, {"fresh": 0.6, "stale": 0.9}, NOW, Streak(), CFG)
    by_id = {c.node_id: c for c in result.candidates}
    assert by_id["stale"].trust == pytest.approx(0.45)
    assert by_id["fresh"].trust == pytest.approx(0.6)
    assert result.selected is not None and result.selected.node_id == "fresh"


def test_unknown_trust_defaults_to_prior() -> None:
    result = place(CPU, [node("a")], {}, NOW, Streak(), CFG)
    assert result.selected is not None and result.selected.trust == 0.5


def test_anti_affinity_yields_to_runner_up_after_a_long_close_streak() -> None:
    nodes = [node("a", utilization=0.0), node("b", utilization=0.05)]  # lead 0.015
    at_limit = place(CPU, nodes, {}, NOW, Streak("a", 5), CFG)
    assert at_limit.selected is not None and at_limit.selected.node_id == "a"
    over = place(CPU, nodes, {}, NOW, Streak("a", 6), CFG)
    assert over.selected is not None and over.selected.node_id == "b"
    assert over.reason_code == "anti_affinity"


def test_anti_affinity_keeps_a_clear_winner() -> None:
    nodes = [node("a", utilization=0.0), node("b", utilization=0.5)]  # lead 0.15
    result = place(CPU, nodes, {}, NOW, Streak("a", 50), CFG)
    assert result.selected is not None and result.selected.node_id == "a"


def test_streak_counts_consecutive_wins() -> None:
    assert Streak().after("a").after("a").after("b") == Streak("b", 1)
    assert Streak("a", 3).after("a") == Streak("a", 4)


@pytest.mark.parametrize("streak", [Streak(), Streak("a", 6), Streak("b", 9)])
def test_recorded_candidates_reproduce_the_choice(streak: Streak) -> None:
    nodes = [node("a", utilization=0.1, region="eu"), node("b", utilization=0.12, region="us"),
             node("c", available_concurrency=1, queue_depth=3, last_seen=0)]
    req = PlacementRequest("cpu", region="eu")
    result = place(req, nodes, {"c": 0.9}, NOW, streak, CFG)
    assert result.selected is not None
    assert rank_recorded(result.candidates, streak, "eu", CFG) == (
        result.selected.node_id, result.reason_code)


def test_a_node_silent_past_the_expiry_is_filtered_out() -> None:
    gone = NOW - CFG.node_expiry_ms - 1
    result = place(CPU, [node("gone", last_seen=gone), node("here")], {}, NOW, Streak(), CFG)
    assert result.selected is not None and result.selected.node_id == "here"
    assert result.filter_counts == {"heartbeat_expired": 1}


def test_a_node_whose_breaker_is_open_gets_no_work_while_another_can_take_it() -> None:
    nodes = [node("a", breaker="open", utilization=0.0), node("b", utilization=0.9)]
    result = place(CPU, nodes, {"a": 0.9, "b": 0.1}, NOW, Streak(), CFG)
    assert result.selected is not None and result.selected.node_id == "b"
    assert result.filter_counts == {"breaker_open": 1}


def test_when_every_able_node_is_open_the_unit_waits_as_queue() -> None:
    # Nothing is placed on an open breaker: the deferred unit counts as queue,
    # which is what asks the autoscaler for capacity, and the breakers probe soon.
    nodes = [node("a", breaker="open"), node("b", breaker="open"), node("d", enabled=False)]
    result = place(CPU, nodes, {}, NOW, Streak(), CFG)
    assert result.selected is None and result.reason_code == "no_eligible_node"
    assert result.filter_counts == {"breaker_open": 2, "disabled": 1}


def test_a_half_open_node_takes_its_probe_and_nothing_more_until_the_next_is_due() -> None:
    due = place(CPU, [node("a", breaker="half_open", probe_due=True)], {}, NOW, Streak(), CFG)
    assert due.selected is not None and due.selected.node_id == "a"
    waiting = place(CPU, [node("a", breaker="half_open", probe_due=False)], {}, NOW, Streak(),
                    CFG)
    assert waiting.selected is None and waiting.filter_counts == {"breaker_probing": 1}


def test_a_release_1_quarantine_fallback_record_still_re_checks() -> None:
    result = place(CPU, [node("a"), node("b", utilization=0.5)], {}, NOW, Streak(), CFG)
    assert rank_recorded(result.candidates, Streak(), None, CFG,
                         recorded_reason="quarantine_fallback") == ("a", "quarantine_fallback")
