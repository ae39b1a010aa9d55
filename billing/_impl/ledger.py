"""The ledger: settled facts in, line items out, each charged exactly once.

A pure reducer over the scheduler's facts (`workunits`) and the LLM
invocations (`llm`), both partitioned by work unit, so one partition of
the ledger sees everything about its units.

- An accepted completion is charged its CPU seconds (`workunit_cpu`).
- LLM tokens are charged from invocations (`llm_tokens`), never again from
  the completion; the switch to bill them from the completion instead exists
  for producers that emit no invocations.
- Only the accepted attempt's invocations are charged. Which attempt that is
  is known only at settlement, which may come before or after an invocation
  (two topics, any interleaving), so an invocation that arrives first is
  priced and held (`ledger.charge.held`) until its unit settles.
- With a limiter running, line items and settlements go to it too (`limits`),
  a unit's settlement after its charges, so its budget hold ends only once
  what it cost is counted.
- Invocations of fenced, rejected or abandoned attempts, and the CPU of
  rejected completions, become unbilled line items (`billed = false`): the
  amount is kept so the operator sees what crashes cost, nothing is charged.
- A cancelled unit is billed the work its running attempt did before the
  cancel stopped it: that attempt's invocations (the tokens were spent) and
  the CPU its agent reports when it stops (`workunit.attempt.stopped`, recorded
  by the scheduler). A result it reports afterwards is fenced, and
  its CPU is leakage like any other refused result.

`line_item_id` is derived from the source event id and the line-item type,
and a line item takes its time and fields from its source only, so the same
source gives the same line item whichever order the inputs came in.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from onceflow.billing._impl.pricing import PriceBook
from onceflow.billing.settings import BillingSettings
from onceflow.schemas import (
    Event,
    LedgerChargeHeld,
    LedgerLineItem,
    LedgerOutcome,
    LedgerUnitSettled,
    LineItemType,
    LlmInvocationCompleted,
    StateRetired,
    WorkUnitAttemptStopped,
    WorkUnitCancelled,
    WorkUnitCompleted,
    WorkUnitFailed,
)
from onceflow.streams.ids import caused_by, derive_event_id
from onceflow.streams.topics.catalog import Topic
from onceflow.streams.types import Reducer, Routed, State

__all__ = ["Ledger", "SettledUnit", "line_item_id"]


def line_item_id(source_event_id: str, line_item_type: LineItemType) -> str:
    """The one id a source's line item of a type can have: redeliveries add nothing."""
    return derive_event_id(source_event_id, f"line_item:{line_item_type}")


def _unit_key(work_unit_id: str) -> str:
    return f"u:{work_unit_id}"


def _held_prefix(work_unit_id: str) -> str:
    return f"h:{work_unit_id}:"


def _held_since_key(at: int, work_unit_id: str, source_event_id: str) -> str:
    """A held invocation by its time: one its unit never settles is let go a horizon on."""
    return f"x:held:{at:013d}:{work_unit_id}:{source_event_id}"


#: how many held invocations one look lets go at most
_LET_GO_PER_FACT = 1000


@dataclass(frozen=True, slots=True)
class SettledUnit:
    """How a unit ended, as far as charging goes: which attempt (if any) may be billed."""

    outcome: LedgerOutcome
    accepted_attempt: int

    @classmethod
    def load(cls, state: State, work_unit_id: str) -> SettledUnit | None:
        d = state.get(_unit_key(work_unit_id))
        return None if d is None else cls(d["outcome"], d["accepted"])

    def save(self, state: State, work_unit_id: str) -> None:
        state.set(_unit_key(work_unit_id), {"outcome": self.outcome,
                                            "accepted": self.accepted_attempt})


def _held_charges(state: State, work_unit_id: str) -> Iterator[LedgerChargeHeld]:
    """A unit's invocations waiting for its settlement, in source-id order."""
    for _, held in state.items(_held_prefix(work_unit_id)):
        yield LedgerChargeHeld.model_validate(held)


class Ledger(Reducer):
    name = "ledger"
    accepts = frozenset({"workunit.completed", "workunit.failed", "workunit.attempt.stopped",
                         "workunit.cancelled", "llm.invocation.completed",
                         "processor.state.retired"})

    def __init__(self, settings: BillingSettings, prices: PriceBook,
                 limits: Topic | None = None, *, horizon_ms: int = 0) -> None:
        self.cfg = settings
        self.prices = prices
        #: where the limiter reads what was billed (None: no limiter runs)
        self.limits = limits
        #: a settled unit is forgotten this long after its settlement (0: never)
        self.horizon_ms = horizon_ms

    # -- decide ----------------------------------------------------------------------------

    def decide(self, state: State, event: Event) -> Sequence[Event]:
        if isinstance(event, WorkUnitCompleted):
            return self._on_completed(state, event)
        if isinstance(event, LlmInvocationCompleted):
            return self._on_invocation(state, event)
        if isinstance(event, WorkUnitFailed) and event.final:
            return self._on_closed(state, event, "failed")
        if isinstance(event, WorkUnitAttemptStopped):
            # the scheduler's record of a cancelled attempt stopping: its work is charged
            return (self._cpu_item(event, billed=True),) if event.cpu_seconds else ()
        if isinstance(event, WorkUnitCancelled):
            return self._on_closed(state, event, "cancelled", event.attempt_index)
        if isinstance(event, StateRetired) and event.processor == "scheduler" \
                and self.horizon_ms:
            return self._on_forgotten(state, event)
        return ()

    def _on_completed(self, state: State, event: WorkUnitCompleted) -> Sequence[Event]:
        if not event.settlement_reason:
            return ()  # an agent's report, not the scheduler's settlement
        wu = event.work_unit_id or ""
        if not event.accepted:
            return (self._cpu_item(event, billed=False,
                                   leakage=f"completion_rejected:{event.settlement_reason}"),)
        if SettledUnit.load(state, wu) is not None:
            return ()  # settled already: the scheduler accepts one completion per unit
        # The settlement comes last: whoever reads these facts in order (the limiter,
        # ending the unit's budget hold) has seen its charges by then.
        facts: list[Event] = [self._cpu_item(event, billed=True)]
        if self.cfg.bill_llm_from_completion and event.llm_tokens > 0:
            facts.append(self._completion_tokens_item(event))
        facts.extend(self._held_item(held, SettledUnit("accepted", event.attempt_index))
                     for held in _held_charges(state, wu))
        facts.append(LedgerUnitSettled(
            **caused_by(event, "unit-settled"), outcome="accepted",
            accepted_attempt=event.attempt_index, source_event_id=event.event_id,
            settlement_reason=event.settlement_reason,
        ))
        return facts

    def _on_closed(self, state: State, event: Event, outcome: LedgerOutcome,
                   charged_attempt: int = 0) -> Sequence[Event]:
        """A unit ended without an accepted result; `charged_attempt`: the attempt a cancel
        stopped, whose spent tokens are billed as work done (0: none)."""
        wu = event.work_unit_id or ""
        if SettledUnit.load(state, wu) is not None:
            return ()
        settled = SettledUnit(outcome, charged_attempt)
        facts: list[Event] = [self._held_item(held, settled)
                              for held in _held_charges(state, wu)]
        facts.append(LedgerUnitSettled(
            **caused_by(event, "unit-settled"), outcome=outcome,
            accepted_attempt=charged_attempt, source_event_id=event.event_id,
        ))
        return facts

    def _on_invocation(self, state: State, event: LlmInvocationCompleted) -> Sequence[Event]:
        if not self.cfg.bill_llm_from_invocation:
            return ()  # tokens are charged from the completion instead
        rate = self.prices.rate_for(event.model)
        held = LedgerChargeHeld(
            **caused_by(event, "charge-held"), source_event_id=event.event_id,
            source_event_type=event.event_type, source_occurred_at=event.occurred_at,
            attempt_index=event.attempt_index, correlation_id=event.correlation_id,
            node_id=event.node_id, model=event.model, provider=event.provider,
            tokens_in=event.tokens_in, tokens_out=event.tokens_out,
            total_tokens=event.total_tokens,
            llm_input_price_usd_per_1k=rate.input_usd_per_1k,
            llm_output_price_usd_per_1k=rate.output_usd_per_1k,
            pricing_version=self.prices.version,
        )
        settled = SettledUnit.load(state, event.work_unit_id or "")
        if settled is None:
            return (held,)
        return (self._held_item(held, settled),)

    # -- bounded state -------------------------------------------------------------------------

    def _on_forgotten(self, state: State, event: StateRetired) -> list[Event]:
        """The scheduler forgot these units, a horizon after they settled: so does the
        ledger. The scheduler's fact comes after every fact of theirs in the partition
        the ledger reads in order, so their settlements were all counted; none can come
        again but as a redelivery, which the dedupe marks of the horizon answer. The
        invocations held a horizon for a settlement that never came (a node that reported
        after its unit was forgotten) are let go as leakage that says so, not held for
        ever."""
        known = [wu for wu in event.work_unit_ids if SettledUnit.load(state, wu) is not None]
        items: list[Event] = []
        stop = _held_since_key(event.occurred_at - self.horizon_ms + 1, "", "")
        for key, _ in state.items("x:held:", stop=stop):
            _, _, _, wu, source = key.split(":", 4)
            raw = state.get(f"{_held_prefix(wu)}{source}")
            if raw is None:
                continue
            item = self._held_item(LedgerChargeHeld.model_validate(raw), SettledUnit("failed", 0))
            items.append(item.model_copy(update={"leakage_reason": "unit_beyond_horizon"}))
            if len(items) >= _LET_GO_PER_FACT:
                break
        if known:
            items.append(StateRetired(
                **caused_by(event, "state-retired"), processor=self.name,
                horizon_ms=self.horizon_ms, inputs_until=event.inputs_until,
                work_unit_ids=known))
        return items

    # -- line items ----------------------------------------------------------------------------

    def _source_envelope(self, source: Event, kind: LineItemType) -> dict[str, Any]:
        """A line item's envelope: its id is its source's and its type's, its time the source's."""
        item_id = line_item_id(source.event_id, kind)
        return caused_by(source, f"line_item:{kind}", line_item_id=item_id,
                         source_event_id=source.event_id, source_event_type=source.event_type,
                         line_item_type=kind, pricing_version=self.prices.version)

    def _cpu_item(self, event: WorkUnitCompleted | WorkUnitAttemptStopped, *, billed: bool,
                  leakage: str = "") -> LedgerLineItem:
        subtotal = self.prices.cpu_cost(event.cpu_seconds)
        return LedgerLineItem(
            **self._source_envelope(event, "workunit_cpu"),
            correlation_id=event.correlation_id, node_id=event.selected_node_id,
            attempt_index=event.attempt_index, cpu_seconds=event.cpu_seconds,
            cpu_unit_price_usd=self.prices.cpu_usd_per_second, subtotal_cpu_usd=subtotal,
            total_usd=subtotal, billed=billed, leakage_reason=leakage,
        )

    def _completion_tokens_item(self, event: WorkUnitCompleted) -> LedgerLineItem:
        """Tokens charged from the completion (only with that switch on): no in/out split."""
        rate = self.prices.default_model
        subtotal = self.prices.token_cost(event.llm_tokens, rate.input_usd_per_1k)
        return LedgerLineItem(
            **self._source_envelope(event, "llm_tokens"),
            correlation_id=event.correlation_id, node_id=event.selected_node_id,
            attempt_index=event.attempt_index, llm_tokens=event.llm_tokens,
            llm_tokens_event_total=event.llm_tokens, llm_tokens_in=event.llm_tokens,
            llm_unit_price_usd_per_1k=rate.input_usd_per_1k,
            llm_input_price_usd_per_1k=rate.input_usd_per_1k,
            subtotal_llm_input_usd=subtotal, subtotal_llm_usd=subtotal, total_usd=subtotal,
        )

    def _held_item(self, held: LedgerChargeHeld, settled: SettledUnit) -> LedgerLineItem:
        """A held invocation's line item: charged only for the accepted attempt."""
        price_in = held.llm_input_price_usd_per_1k
        price_out = held.llm_output_price_usd_per_1k
        sub_in = PriceBook.token_cost(held.tokens_in, price_in)
        sub_out = PriceBook.token_cost(held.tokens_out, price_out)
        attempt = held.attempt_index
        billed = settled.outcome in ("accepted", "cancelled") and (
            attempt == settled.accepted_attempt)
        if billed:
            leakage = ""
        elif settled.outcome == "accepted":
            leakage = f"attempt_not_accepted:{attempt}!={settled.accepted_attempt}"
        else:
            leakage = f"unit_{settled.outcome}"
        item_id = line_item_id(held.source_event_id, "llm_tokens")
        return LedgerLineItem(
            event_id=item_id, line_item_id=item_id, occurred_at=held.source_occurred_at,
            tenant_id=held.tenant_id, execution_session_id=held.execution_session_id,
            work_unit_id=held.work_unit_id, causation_id=held.source_event_id,
            source_event_id=held.source_event_id, source_event_type=held.source_event_type,
            line_item_type="llm_tokens", pricing_version=held.pricing_version,
            correlation_id=held.correlation_id, node_id=held.node_id, model=held.model,
            attempt_index=attempt, llm_tokens=held.total_tokens,
            llm_tokens_event_total=held.total_tokens, llm_tokens_in=held.tokens_in,
            llm_tokens_out=held.tokens_out, llm_unit_price_usd_per_1k=price_in,
            llm_input_price_usd_per_1k=price_in, llm_output_price_usd_per_1k=price_out,
            subtotal_llm_input_usd=sub_in, subtotal_llm_output_usd=sub_out,
            subtotal_llm_usd=sub_in + sub_out, total_usd=sub_in + sub_out, billed=billed,
            leakage_reason=leakage,
        )

    # -- route ---------------------------------------------------------------------------------

    def route(self, fact: Event) -> Sequence[Routed]:
        """Line items and settlements, to the limiter: they count against budgets and token
        rates, and a settlement ends the unit's budget hold."""
        if self.limits is not None and isinstance(fact, LedgerLineItem | LedgerUnitSettled):
            return (Routed(self.limits.name, fact, 0),)
        return ()

    # -- evolve ----------------------------------------------------------------------------------

    def evolve(self, state: State, fact: Event) -> None:
        wu = fact.work_unit_id or ""
        if isinstance(fact, LedgerChargeHeld):
            state.set(f"{_held_prefix(wu)}{fact.source_event_id}", fact.model_dump(mode="json"))
            if self.horizon_ms:
                state.set(_held_since_key(fact.source_occurred_at, wu, fact.source_event_id), 1)
        elif isinstance(fact, LedgerUnitSettled):
            SettledUnit(fact.outcome, fact.accepted_attempt).save(state, wu)
        elif isinstance(fact, StateRetired):
            for forgotten in fact.work_unit_ids:
                state.delete(_unit_key(forgotten))
        elif isinstance(fact, LedgerLineItem) and fact.line_item_type == "llm_tokens":
            state.delete(f"{_held_prefix(wu)}{fact.source_event_id}")
            if self.horizon_ms:
                state.delete(_held_since_key(fact.occurred_at, wu, fact.source_event_id))
