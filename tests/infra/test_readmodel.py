"""The read model against the log it folds, in the deterministic simulation: its answers now
and at random logged times equal a fold of the whole log cut at that time, and it holds the
same rows whichever order its topics' partitions are read in (a rebuild reads them all at
once)."""

from __future__ import annotations

import os
import random
from collections import Counter
from typing import Any

import pytest

from onceflow.billing import Wallet
from onceflow.infra.readmodel import ReadModelFold, ReadModelReader
from onceflow.infra.sessions import fold_sessions
from onceflow.schemas import (
    Event,
    LedgerLineItem,
    SessionLimitCrossed,
    SessionLimitsChanged,
    SingleObjectCodec,
    WalletUpdated,
)
from onceflow.streams.limits import Limiter
from onceflow.streams.state import MemoryState
from tests.simulation.workload import play_seed
from tests.simulation.world import World

CODEC = SingleObjectCodec()
#: the topics the read model reads, by their role in the world
ROLES = ("workunits", "flow", "ledger", "wallets", "nodes", "trust", "capacity")


def _partitions(world: World) -> list[list[tuple[Any, int, int, Event]]]:
    return [[(role, p, offset, r.event) for offset, r in enumerate(part)] for role in ROLES
            for p, part in enumerate(world.log.records[world.catalog[role].name])]


def _fold(world: World, rng: random.Random) -> tuple[MemoryState, ReadModelReader]:
    """Every partition of the read topics, interleaved at random (each in its order)."""
    fold = ReadModelFold(Limiter.from_settings(world.settings), CODEC)
    state = MemoryState()
    queues = [list(p) for p in _partitions(world) if p]
    while queues:
        q = rng.choice(queues)
        for _ in range(rng.randint(1, 50)):
            if not q:
                break
            role, p, offset, event = q.pop(0)
            fold.apply(state, role, event, CODEC.encode(event), (p, offset))
        queues = [q for q in queues if q]
    return state, ReadModelReader(state, fold.limiter, CODEC)


def _log(world: World) -> tuple[list[Event], list[LedgerLineItem]]:
    """What `read_log` reads, from the simulated topics."""
    def events(role: str) -> list[Event]:
        return [r.event for part in world.log.records[world.catalog[role].name] for r in part]

    facts = events("workunits") + [e for e in events("flow")
                                   if isinstance(e, SessionLimitCrossed | SessionLimitsChanged)]
    items = [e for e in events("ledger") if isinstance(e, LedgerLineItem)]
    return facts, items


def _session_json(view: Any) -> dict[str, Any]:
    return {**view.as_json(), "dag": sorted((s.as_json() for s in view.steps.values()),
                                            key=lambda s: s["work_unit_id"])}


SEEDS = [int(s) for s in os.environ.get("READMODEL_SEEDS", "3,11,17,29,42,57,73,88").split(",")]


@pytest.mark.parametrize("seed", SEEDS)
def test_answers_now_and_at_random_times_equal_a_fold_of_the_log_cut_there(seed: int) -> None:
    world, _, _ = play_seed(seed)
    rng = random.Random(seed)
    state, reader = _fold(world, rng)
    facts, items = _log(world)
    times = sorted({e.occurred_at for e in facts})
    cuts: list[int | None] = [None, *rng.sample(times, k=min(6, len(times)))]
    for at in cuts:
        expected = fold_sessions(facts, items, at=at)
        for (tenant, name), view in expected.items():
            got = reader.session(None, tenant, name, at=at)
            assert got is not None, (tenant, name, at)
            assert _session_json(got) == _session_json(view), (tenant, name, at)
            for wu, step in view.steps.items():
                unit = reader.unit(tenant, wu, at=at)
                assert unit is not None and {k: unit[k] for k in step.as_json()} == \
                    step.as_json(), (wu, at)
        # no session the log did not have by then
        for summary in reader.sessions():
            if at is None:
                assert (summary["tenant_id"], summary["session_id"]) in expected
        # units by state at `at`, from the minute buckets, equal each unit's own history
        if at is not None:
            per_unit = Counter(u["state"] for k, _ in state.items("u\x1f")
                               if (u := reader.unit(None, k.split("\x1f")[1], at=at)))
            assert reader.units(at)["by_state"] == dict(sorted(per_unit.items())), at
    # sessions listed as their full views show them
    listed = {(s["tenant_id"], s["session_id"]): s for s in reader.sessions()}
    for key, view in fold_sessions(facts, items).items():
        assert listed[key] == view.as_json()


@pytest.mark.parametrize("seed", SEEDS[:4])
def test_wallets_at_a_time_are_their_partials_as_they_were_then(seed: int) -> None:
    world, _, _ = play_seed(seed)
    rng = random.Random(seed)
    _, reader = _fold(world, rng)
    partials = [r.event for part in world.log.records[world.catalog["wallets"].name]
                for r in part if isinstance(r.event, WalletUpdated)]
    if not partials:
        pytest.skip("nothing was billed in this seed")
    stamps_seen = sorted({p.occurred_at for p in partials})
    for at in [None, *rng.sample(stamps_seen, k=min(3, len(stamps_seen)))]:
        # each partial at its last update stamped by `at`: stamped with the latest
        # logged time it reflects, which never goes back
        latest: dict[str, WalletUpdated] = {}
        stamps: dict[str, int] = {}
        for p in partials:
            stamps[p.wallet_id] = max(stamps.get(p.wallet_id, 0), p.occurred_at)
            if at is None or stamps[p.wallet_id] <= at:
                latest[p.wallet_id] = p
        expected = Wallet.combine(latest.values())
        assert reader.wallets(at=at) == expected, at  # amounts compare as numbers


@pytest.mark.parametrize("seed", SEEDS[:4])
def test_the_rows_are_the_same_whichever_order_the_partitions_are_read_in(seed: int) -> None:
    world, _, _ = play_seed(seed)
    one, _ = _fold(world, random.Random(1))
    other, _ = _fold(world, random.Random(2))
    assert list(one.items()) == list(other.items())


@pytest.mark.parametrize("seed", SEEDS[:3])
def test_a_rocksdb_snapshot_answers_as_the_fold_in_memory_does(seed: int, tmp_path: Any
                                                               ) -> None:
    """The same rows in RocksDB (as the views service keeps them), read through a
    snapshot: every answer, now and at past times, equals the in-memory one's."""
    from onceflow.streams.state.rocksdb import open_partition_store

    world, _, _ = play_seed(seed)
    memory, expected = _fold(world, random.Random(seed))
    store = open_partition_store(tmp_path, "readmodel", 0)
    try:
        for k, v in memory.items():
            store.set(k, v)
        store.checkpoint()
        got = ReadModelReader(store.snapshot(), expected.limiter, CODEC)
        stamps = sorted({k.split("\x1f")[-1] for k, _ in memory.items("wh\x1f")})
        times: list[int | None] = [None, *(int(t) for t in stamps[::max(1, len(stamps) // 4)])]
        for at in times:
            assert got.wallets(at=at) == expected.wallets(at=at), at
            assert got.units(at) == expected.units(at), at
            for s in expected.sessions():
                one = got.session(None, s["tenant_id"], s["session_id"], at)
                other = expected.session(None, s["tenant_id"], s["session_id"], at)
                assert (one and _session_json(one)) == (other and _session_json(other))
        shown, total = got.sessions_to_show(3)
        want, want_total = expected.sessions_to_show(3)
        assert [(v.tenant_id, v.session_id) for v in shown] == \
            [(v.tenant_id, v.session_id) for v in want] and total == want_total
        assert shown, "some session to show"
        assert got.inbox() == expected.inbox()
    finally:
        store.close()
