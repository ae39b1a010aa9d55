"""The deterministic simulation in the suite: ONCEFLOW_SIM_SEEDS seeds (10,000 by default)
in chunks, so two test workers share them; every invariant after every seed; a failing seed
names the one command that replays it with its trace."""

from __future__ import annotations

import os

import pytest

from tests.simulation.fixtures import record_report
from tests.simulation.runner import replay_command, run_seeds
from tests.simulation.workload import run_seed

SEEDS = int(os.environ.get("ONCEFLOW_SIM_SEEDS", "10000"))
CHUNKS = 8


@pytest.mark.parametrize("chunk", range(CHUNKS))
def test_every_invariant_holds_for_every_seed(chunk: int) -> None:
    size = -(-SEEDS // CHUNKS)
    first = chunk * size
    count = max(0, min(size, SEEDS - first))
    report = run_seeds(first, count)
    record_report(chunk, report)
    assert not report.failures, "\n".join(f.describe() for f in report.failures[:10])


def test_a_seed_runs_the_same_twice() -> None:
    """Determinism: one seed, run twice, appends the same records in the same order."""
    from tests.simulation import world

    def journal(seed: int) -> list[str]:
        world.TRACE = []
        try:
            run_seed(seed)
            return world.TRACE
        finally:
            world.TRACE = None

    first, again = journal(11), journal(11)
    assert first == again and len(first) > 50


def test_a_failing_seed_says_how_to_replay_it() -> None:
    assert replay_command(42) == "python -m tests.simulation --seed 42 --trace"


def test_a_member_that_is_not_fenced_is_found() -> None:
    """The planted bug: a member the group moved on from commits what it decided after
    (no fencing). Seeds where partitions move find it; the same seeds hold with fencing."""
    from tests.simulation import world

    fenced = run_seeds(0, 60)
    assert not fenced.failures, fenced.failures[0].describe()
    assert fenced.moves > 0, "no partition moved: the seeds prove nothing"
    world.FENCING = False
    try:
        unfenced = run_seeds(0, 60)
    finally:
        world.FENCING = True
    assert unfenced.failures, "a deposed member's writes went unnoticed"
