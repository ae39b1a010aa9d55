"""The anomaly checker: what the ledger and the scheduler promise, checked as it happens.

It reads the scheduler's facts, the invocations and the ledger (all three
partitioned by work unit) and emits a `billing.anomaly` for every broken
promise it can prove from one partition:

- `duplicate_line_item`: two line items with different ids for one source;
- `malformed_amount`: a total that is negative, not a 6-place amount, or not
  the sum of its subtotals;
- `completion_without_grant`: an accepted completion whose attempt was never
  granted; `claim_without_schedule`: a grant for an attempt never scheduled;
- `token_mismatch`: a line item whose tokens differ from its invocation's;
- `billed_unaccepted_attempt`: a charge for an attempt that was not accepted.

Checks that need the whole ledger (session totals against wallets, invocation
tokens against billed tokens per session, cost spikes) are in `reconcile`.

Unlike a decider, the checker's state is an index of what it has seen, not
the fold of its findings, so it runs with the shell's `recovery="inputs"`:
after a restart it reads its inputs again and sends no finding twice. Every
key names its unit, so that when the scheduler forgets a unit (its
`processor.state.retired`, a retention horizon after it settled, comes
after every fact of the unit in the same partition) the checker forgets it
too, and its state stays the size of a horizon's work.
"""

from __future__ import annotations

from collections.abc import Sequence

from onceflow.schemas import (
    MONEY_QUANTUM,
    SETTLED_WITHOUT_RUNNING,
    BillingAnomaly,
    ClaimGranted,
    Event,
    LedgerLineItem,
    LlmInvocationCompleted,
    StateRetired,
    WorkUnitCompleted,
    WorkUnitScheduled,
)
from onceflow.streams.ids import derive_event_id
from onceflow.streams.types import Reducer, State

__all__ = ["AnomalyChecker", "finding"]

#: the checker's kinds of key, each `kind:unit:...`: what a retired unit leaves behind
_PER_UNIT = ("sch", "gr", "acc", "bl", "src", "inv", "lit")


def finding(source: Event, check: str, *, subject: str, expected: str = "", observed: str = "",
            message: str, severity: str = "flag") -> BillingAnomaly:
    """A finding whose id is derived from what it is about, so re-finding it adds nothing."""
    return BillingAnomaly(
        event_id=derive_event_id(f"{check}\x1f{subject}", "anomaly"),
        occurred_at=source.occurred_at, tenant_id=source.tenant_id,
        execution_session_id=source.execution_session_id, work_unit_id=source.work_unit_id,
        causation_id=source.event_id, check=check, severity=severity,  # type: ignore[arg-type]
        subject_id=subject, expected=expected, observed=observed, message=message,
    )


class AnomalyChecker(Reducer):
    name = "anomalies"
    accepts = frozenset({"workunit.scheduled", "workunit.claim.granted", "workunit.completed",
                         "llm.invocation.completed", "ledger.line_item",
                         "processor.state.retired"})

    def decide(self, state: State, event: Event) -> Sequence[Event]:
        wu = event.work_unit_id or ""
        if isinstance(event, StateRetired):
            if event.processor != "scheduler":
                return ()  # the scheduler's, on the topic that has every fact checked first
            for unit in event.work_unit_ids:
                for kind in _PER_UNIT:
                    for key, _ in list(state.items(f"{kind}:{unit}:")):
                        state.delete(key)
            return ()
        if isinstance(event, WorkUnitScheduled):
            state.set(f"sch:{wu}:{event.attempt_index}", 1)
        elif isinstance(event, ClaimGranted):
            state.set(f"gr:{wu}:{event.attempt_index}", event.node_id)
            if f"sch:{wu}:{event.attempt_index}" not in state:
                return (finding(event, "claim_without_schedule",
                                subject=f"{wu}#{event.attempt_index}",
                                message=f"attempt {event.attempt_index} of {wu} was granted to "
                                        f"{event.node_id} but never scheduled"),)
        elif isinstance(event, WorkUnitCompleted) and event.accepted:
            return self._on_accepted(state, event, wu)
        elif isinstance(event, LlmInvocationCompleted):
            state.set(f"inv:{wu}:{event.event_id}", event.total_tokens)
            billed = state.get(f"lit:{wu}:{event.event_id}")
            if billed is not None:
                state.delete(f"lit:{wu}:{event.event_id}")
                state.delete(f"inv:{wu}:{event.event_id}")
                return self._tokens(event, event.event_id, event.total_tokens, billed)
        elif isinstance(event, LedgerLineItem):
            return self._on_line_item(state, event, wu)
        return ()

    def _on_accepted(self, state: State, event: WorkUnitCompleted, wu: str) -> list[Event]:
        out: list[Event] = []
        state.set(f"acc:{wu}:", event.attempt_index)
        if (event.settlement_reason not in SETTLED_WITHOUT_RUNNING
                and f"gr:{wu}:{event.attempt_index}" not in state):
            out.append(finding(event, "completion_without_grant",
                               subject=f"{wu}#{event.attempt_index}",
                               message=f"{wu} attempt {event.attempt_index} was accepted "
                                       "without a grant"))
        for key, item_id in list(state.items(f"bl:{wu}:")):
            state.delete(key)
            attempt = int(key.rsplit(":", 2)[1])
            if attempt != event.attempt_index:
                out.append(self._unaccepted(event, item_id, attempt, event.attempt_index))
        return out

    def _on_line_item(self, state: State, item: LedgerLineItem, wu: str) -> list[Event]:
        out: list[Event] = []
        src = f"src:{wu}:{item.source_event_id}:{item.line_item_type}"
        first = state.get(src)
        if first is None:
            state.set(src, item.line_item_id)
        elif first != item.line_item_id:
            out.append(finding(item, "duplicate_line_item", subject=item.line_item_id,
                               expected=first, observed=item.line_item_id,
                               message=f"source {item.source_event_id} has a second "
                                       f"{item.line_item_type} line item"))
        problem = _amount_problem(item)
        if problem:
            out.append(finding(item, "malformed_amount", subject=item.line_item_id,
                               observed=f"{item.total_usd}", message=problem))
        if not item.billed:
            return out
        if item.line_item_type == "llm_tokens" and item.source_event_type.startswith("llm."):
            invoked = state.get(f"inv:{wu}:{item.source_event_id}")
            if invoked is None:
                state.set(f"lit:{wu}:{item.source_event_id}", item.llm_tokens)
            else:
                state.delete(f"inv:{wu}:{item.source_event_id}")
                out.extend(self._tokens(item, item.source_event_id, invoked, item.llm_tokens))
        accepted = state.get(f"acc:{wu}:")
        if accepted is None:
            state.set(f"bl:{wu}:{item.attempt_index}:{item.line_item_id}", item.line_item_id)
        elif item.attempt_index != accepted:
            out.append(self._unaccepted(item, item.line_item_id, item.attempt_index, accepted))
        return out

    @staticmethod
    def _tokens(source: Event, invocation: str, invoked: int, billed: int) -> list[Event]:
        if invoked == billed:
            return []
        return [finding(source, "token_mismatch", subject=invocation, expected=str(invoked),
                        observed=str(billed),
                        message=f"invocation {invocation} used {invoked} tokens, the ledger "
                                f"billed {billed}")]

    @staticmethod
    def _unaccepted(source: Event, item_id: str, attempt: int, accepted: int) -> BillingAnomaly:
        return finding(source, "billed_unaccepted_attempt", subject=item_id,
                       expected=str(accepted), observed=str(attempt),
                       message=f"line item {item_id} charges attempt {attempt}; only attempt "
                               f"{accepted} was accepted")

    def evolve(self, state: State, fact: Event) -> None:
        pass  # findings change nothing: the state is the index of inputs


def _amount_problem(item: LedgerLineItem) -> str:
    amounts = {
        "total_usd": item.total_usd, "subtotal_cpu_usd": item.subtotal_cpu_usd,
        "subtotal_llm_usd": item.subtotal_llm_usd,
    }
    for name, value in amounts.items():
        if not value.is_finite():
            return f"{name} is not a finite amount"
        if value < 0:
            return f"{name} is negative ({value})"
        if value != value.quantize(MONEY_QUANTUM):
            return f"{name} {value} has more than 6 decimal places"
    if item.total_usd != item.subtotal_cpu_usd + item.subtotal_llm_usd:
        return (f"total_usd {item.total_usd} is not the sum of its subtotals "
                f"({item.subtotal_cpu_usd} + {item.subtotal_llm_usd})")
    if item.line_item_type == "llm_tokens" and (
            item.subtotal_llm_input_usd + item.subtotal_llm_output_usd != item.subtotal_llm_usd
            and (item.subtotal_llm_input_usd or item.subtotal_llm_output_usd)):
        return "subtotal_llm_usd is not the sum of its input and output subtotals"
    if item.cpu_seconds < 0 or item.llm_tokens < 0:
        return "a negative quantity"
    return ""

