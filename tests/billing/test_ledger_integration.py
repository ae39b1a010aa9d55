"""The ledger on the real broker: redelivery, a lost consumer position, SIGKILL, replay."""

from __future__ import annotations

import os
import signal
from collections import Counter
from decimal import Decimal

import pytest

from onceflow.billing import read_wallets, tenant_wallet_id
from onceflow.billing.worker import build_ledger, build_wallets
from onceflow.infra.roles import start_roles, stop_roles
from onceflow.schemas import Event, LedgerLineItem, SingleObjectCodec
from onceflow.settings import OnceflowSettings
from onceflow.streams.kafka import EventProducer
from onceflow.streams.runtime import verify_replay
from onceflow.streams.topics import TopicCatalog, create_topics
from tests.billing.fixtures import Books, accepted, failed_final, invocation
from tests.fixtures import events, running, wait_for

pytestmark = [pytest.mark.integration]


def source_events(units: int) -> list[Event]:
    """Settlements and invocations as the scheduler and agents write them, over 3 tenants.

    Every fifth unit is an LLM unit; every seventh also has a fenced first
    attempt (its invocation is leakage); every thirteenth is abandoned.
    """
    out: list[Event] = []
    for n in range(units):
        wu, tenant, session = f"wu{n}", f"tenant-{n % 3}", f"s{n % 11}"
        if n % 13 == 12:
            out += [invocation(wu, tenant=tenant, session=session), failed_final(wu)]
            continue
        attempt = 2 if n % 7 == 6 else 1
        if attempt == 2:
            out.append(invocation(wu, attempt=1, tenant=tenant, session=session))
        if n % 5 == 4:
            out.append(invocation(wu, attempt=attempt, tokens_in=40 + n % 50, tokens_out=n % 30,
                                  tenant=tenant, session=session))
        out.append(accepted(wu, attempt=attempt, cpu=f"0.{n % 1000:03d}125", tenant=tenant,
                            session=session))
    return out


def expected_books(sources: list[Event]) -> Books:
    books = Books()
    books.feed(*sources)
    return books


def produce(settings: OnceflowSettings, sources: list[Event], times: int = 1) -> None:
    catalog = TopicCatalog(settings)
    producer = EventProducer(settings, SingleObjectCodec())
    for _ in range(times):
        for e in sources:
            role = "llm" if e.event_type.startswith("llm.") else "workunits"
            producer.send(catalog[role], e)
    producer.flush()


def line_items(settings: OnceflowSettings) -> list[LedgerLineItem]:
    return [e for e in events(settings, TopicCatalog(settings)["ledger"].name)
            if isinstance(e, LedgerLineItem)]


def wallets_folded(settings: OnceflowSettings) -> int:
    return sum(w.record_count + w.leakage_count for w in read_wallets(settings).values()
               if not w.execution_session_id)


def assert_books_match(settings: OnceflowSettings, expected: Books) -> None:
    written = line_items(settings)
    ids = Counter(i.line_item_id for i in written)
    assert [i for i, n in ids.items() if n > 1] == [], "a line item was written twice"
    assert set(ids) == {i.line_item_id for i in expected.line_items}
    wallets = read_wallets(settings)
    for tenant in ("tenant-0", "tenant-1", "tenant-2"):
        exact = sum((i.total_usd for i in expected.billed() if i.tenant_id == tenant),
                    Decimal("0"))
        assert wallets[tenant_wallet_id(tenant)].debit_usd == exact


def test_redelivered_sources_and_a_lost_position_add_no_line_item(
        settings: OnceflowSettings, uid: str) -> None:
    create_topics(settings)
    sources = source_events(300)
    expected = expected_books(sources)
    produce(settings, sources, times=2)  # a producer that retried everything
    ledger = build_ledger(settings, group_id=f"ledger-{uid}")
    wallets = build_wallets(settings, group_id=f"wallets-{uid}")
    with running(ledger, wallets):
        wait_for(lambda: wallets_folded(settings) >= len(expected.line_items), timeout=90,
                 what="every line item folded into a wallet")
    assert_books_match(settings, expected)
    before = len(events(settings, TopicCatalog(settings)["ledger"].name))

    # The same inputs from offset 0 again: new consumer groups (no committed
    # position) and no local state, as after a crash before the first commit.
    again = settings.model_copy(update={"state_dir": settings.state_dir / "again"})
    ledger2 = build_ledger(again, group_id=f"ledger2-{uid}")
    with running(ledger2):
        wait_for(lambda: ledger2.processed >= 2 * len(sources), timeout=90,
                 what="every input read again")
    assert len(events(settings, TopicCatalog(settings)["ledger"].name)) == before
    assert_books_match(settings, expected)


@pytest.mark.chaos
def test_billing_killed_mid_stream_bills_everything_once(settings: OnceflowSettings) -> None:
    create_topics(settings)
    sources = source_events(5000)
    expected = expected_books(sources)
    produce(settings, sources)
    roles = start_roles(settings, [], scheduler=False, billing=True)
    try:
        wait_for(lambda: len(line_items(settings)) >= 300, timeout=90, interval=0.05,
                 what="billing under way")
        victim = roles[0]
        os.kill(victim.pid, signal.SIGKILL)
        victim.process.wait(timeout=10)
        folded_at_kill = wallets_folded(settings)
        assert folded_at_kill < len(expected.line_items), "killed too late to prove anything"
        roles = start_roles(settings, [], scheduler=False, billing=True)
        wait_for(lambda: wallets_folded(settings) >= len(expected.line_items), timeout=120,
                 what="every line item folded after the restart")
        assert_books_match(settings, expected)
        catalog = TopicCatalog(settings)
        for processor in (build_ledger(settings), build_wallets(settings)):
            check = verify_replay(processor.reducer, settings,
                                  catalog["ledger" if processor.reducer.name == "ledger"
                                          else "wallets"].name)
            assert check.equal, check.first_difference()
    finally:
        stop_roles(roles)
