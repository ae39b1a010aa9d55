"""Builders for view tests: an engine holding line items made by the real ledger reducer."""

from __future__ import annotations

from decimal import Decimal

from onceflow.billing.views import ViewEngine, line_item_batch
from onceflow.schemas import LedgerLineItem, SingleObjectCodec
from tests.billing.fixtures import T0, Books, accepted, invocation

HOUR = 3_600_000


def ledger_items(units: int, *, tenants: int = 3) -> list[LedgerLineItem]:
    """Line items for `units` units over a few tenants, sessions, models and hours."""
    books = Books()
    for n in range(units):
        wu, tenant, session = f"wu{n}", f"t{n % tenants}", f"s{n % 7}"
        at = T0 + (n % 5) * HOUR
        if n % 4 == 3:
            books.feed(invocation(wu, tenant=tenant, session=session, at=at,
                                  model=f"m{(n // 4) % 2}", tokens_in=100 + n, tokens_out=n % 40))
        books.feed(accepted(wu, cpu=f"0.{n % 900:03d}5", tenant=tenant, session=session, at=at))
    return books.line_items


def ingest(engine: ViewEngine, items: list[LedgerLineItem], topic: str = "ledger",
           partition: int = 0, first_offset: int = 0) -> int:
    codec = SingleObjectCodec()
    records = []
    for i, item in enumerate(items):
        _, record = codec.decode_record(codec.encode(item))
        records.append({**record, "_partition": partition, "_offset": first_offset + i})
    return engine.ingest(line_item_batch(records), topic,
                         {partition: first_offset + len(items)})


def exact_total(items: list[LedgerLineItem], tenant: str | None = None) -> Decimal:
    return sum((i.total_usd for i in items if i.billed and tenant in (None, i.tenant_id)),
               Decimal("0"))
