"""The capacity controller: window rules, cooldowns, bounds, modes, determinism."""

from __future__ import annotations

import pytest

from onceflow.autoscaler import CapacityController, recheck
from onceflow.schemas import (
    CapacityAdmissionModeChanged,
    CapacityScaleRequested,
    CapacityWindowClosed,
    Event,
    QueueSampled,
    SingleObjectCodec,
)
from onceflow.settings import AutoscalerSettings
from onceflow.streams.runtime import fingerprint_items
from onceflow.streams.state import MemoryState

T0 = 1_700_000_000_000
W = 5000


class Controller:
    def __init__(self, **cfg: object) -> None:
        self.cfg = AutoscalerSettings(**cfg)  # type: ignore[arg-type]
        self.reducer = CapacityController(self.cfg)
        self.state = MemoryState()
        self.facts: list[Event] = []
        self.n = 0

    def window(self, queue: int = 0, *, wait: float = 0.0, util: float = 0.5, nodes: int = 3,
               partitions: int = 2, throttled: int = 0) -> list[Event]:
        """One window's samples (queue split over partitions); returns what its close decided."""
        start = T0 + self.n * W
        self.n += 1
        out: list[Event] = []
        for p in range(partitions):
            share = queue // partitions + (queue % partitions if p == 0 else 0)
            sample = QueueSampled(event_id=f"s-{self.n}-{p}", occurred_at=start + 10 + p,
                                  partition=p, queue=share, wait_p95_ms=wait, utilization=util,
                                  node_count=nodes, throttled=throttled)
            _, facts = self.reducer.apply(self.state, sample)
            out += [f for f in facts if isinstance(f, Event)]
        self.facts += out
        return [f for f in out if not isinstance(f, QueueSampled)]

    def scale(self) -> list[CapacityScaleRequested]:
        return [f for f in self.facts if isinstance(f, CapacityScaleRequested)]

    def modes(self) -> list[str]:
        return [f.new_mode for f in self.facts if isinstance(f, CapacityAdmissionModeChanged)]


def run(c: Controller, windows: list[dict[str, object]]) -> None:
    for w in windows:
        c.window(**w)  # type: ignore[arg-type]
    c.window()  # a last sample closes the last window


@pytest.mark.parametrize("pressure", [{"queue": 201}, {"wait": 2001.0}, {"util": 0.81}])
def test_three_windows_over_any_threshold_scale_up_by_one(pressure: dict[str, object]) -> None:
    c = Controller()
    run(c, [pressure, pressure])
    assert c.scale() == []  # two windows are not enough
    c2 = Controller()
    run(c2, [pressure] * 3)
    (req,) = c2.scale()
    assert (req.previous_replicas, req.new_replicas) == (3, 4)
    assert req.reason.endswith("for 3 windows")


def test_a_window_below_the_threshold_resets_the_streak() -> None:
    c = Controller()
    run(c, [{"queue": 300}, {"queue": 300}, {"queue": 100}, {"queue": 300}, {"queue": 300}])
    assert c.scale() == []


def test_scale_up_waits_for_its_cooldown_and_stops_at_the_maximum() -> None:
    c = Controller(scale_up_cooldown_ms=60_000, max_replicas=5)
    run(c, [{"queue": 500}] * 30)
    ups = c.scale()
    assert [r.new_replicas for r in ups] == [4, 5]  # 3 -> 4, then 5 after 60 s, then capped
    assert ups[1].window_end - ups[0].window_end >= 60_000


def test_six_quiet_windows_scale_down_with_a_cooldown_and_a_floor() -> None:
    c = Controller(scale_down_cooldown_ms=180_000, min_replicas=2)
    run(c, [{"queue": 0, "util": 0.1}] * 100)
    downs = c.scale()
    assert [r.new_replicas for r in downs] == [2]  # 3 -> 2, then the floor
    c2 = Controller(scale_down_cooldown_ms=30_000, min_replicas=1)
    run(c2, [{"queue": 0, "util": 0.1}] * 30)
    assert [r.new_replicas for r in c2.scale()] == [2, 1]


def test_any_pressure_blocks_scale_down() -> None:
    c = Controller()
    run(c, [{"queue": 10, "util": 0.5}] * 10)  # utilization not below 0.45
    assert c.scale() == []


def test_modes_throttle_then_critical_then_back_down() -> None:
    c = Controller()
    # a window is decided when the next window's first sample arrives
    c.window(queue=950)
    c.window(queue=1200)
    assert c.modes() == ["THROTTLED"]
    c.window(queue=1200)
    c.window(queue=1200)
    assert c.modes() == ["THROTTLED"]  # two windows at >= 1000 are not three
    c.window(queue=700)
    assert c.modes() == ["THROTTLED", "CRITICAL"]
    c.window(queue=100)
    assert c.modes() == ["THROTTLED", "CRITICAL", "THROTTLED"]  # below 900 again
    for _ in range(5):
        c.window(queue=100)
    assert c.modes()[-1] == "THROTTLED"  # five windows below 500 are not six
    c.window(queue=100)
    assert c.modes()[-1] == "OPEN"


def test_throttled_units_do_not_count_as_queue() -> None:
    c = Controller()
    run(c, [{"queue": 100, "throttled": 5000}] * 4)
    assert c.modes() == []


def test_every_window_re_runs_from_its_record_and_folding_rebuilds_the_state() -> None:
    c = Controller(scale_up_cooldown_ms=10_000, scale_down_cooldown_ms=10_000)
    pattern = [{"queue": 1100}] * 4 + [{"queue": 0, "util": 0.1}] * 8 + [{"util": 0.9}] * 4
    run(c, pattern * 2)
    codec = SingleObjectCodec()
    windows = [f for f in c.facts if isinstance(f, CapacityWindowClosed)]
    assert len(windows) == 2 * len(pattern)
    for w in windows:
        decoded = codec.decode(codec.encode(w))
        assert isinstance(decoded, CapacityWindowClosed)
        after, decision = recheck(decoded, c.cfg)
        assert decision == decoded.decision
        assert (after.replicas, after.mode, after.up, after.down) == (
            decoded.replicas, decoded.mode, decoded.up_streak, decoded.down_streak)
    rebuilt = MemoryState()
    for f in c.facts:
        c.reducer.evolve(rebuilt, codec.decode(codec.encode(f)))
    assert fingerprint_items(rebuilt.raw_items()) == fingerprint_items(
        [(k, v) for k, v in c.state.raw_items() if k.startswith(b"s\x00")])
    decided = " ".join(w.decision for w in windows)
    assert all(d in decided for d in ("scale_up", "scale_down", "mode:CRITICAL", "mode:OPEN"))
