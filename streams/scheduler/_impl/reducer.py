"""The scheduler: the single writer of every work unit's state machine.

A pure reducer. Inputs are what clients submit, what node agents report
(claims, staged effects, completions, failures), the clock ticks that ride
on the same report partitions, dependency notices between partitions, and
operator resolutions. Every state change is one of its facts, so folding the
work-unit topic from offset 0 rebuilds the state bit for bit.

States of a unit::

    waiting ─┐                      ┌─> completed
    deferred ┼─> scheduled ─> granted ┼─> retry_wait ─> scheduled ...
    retry_wait┘     │ claim timeout   ├─> needs_operator ─> (operator)
                    └─> scheduled (next attempt, elsewhere)  └─> failed
    rejected, cancelled: terminal.

Why ticks ride on the report partitions: an agent records `effect.staged`
(and waits for the broker's ack) before it acts, and never starts acting
after its lease deadline. A tick at or after that deadline is produced
later in wall time, so in the shared partition it comes after any staged
record, and the scheduler cannot miss a staged effect when it decides what
an expired lease means.
"""

from __future__ import annotations

import hashlib
import math
import weakref
from collections.abc import Sequence
from decimal import Decimal
from typing import Any

from onceflow.schemas import (
    ClaimGranted,
    ClaimRejected,
    ClaimRequested,
    ClockTick,
    ContentRef,
    ControlOperatorResolved,
    ControlSessionCancelRequested,
    EffectStaged,
    Event,
    QueueSampled,
    WorkUnitCancelled,
    WorkUnitCompleted,
    WorkUnitDeferred,
    WorkUnitDependencyRegistered,
    WorkUnitDependencyResolved,
    WorkUnitFailed,
    WorkUnitNeedsOperator,
    WorkUnitRejected,
    WorkUnitRetryScheduled,
    WorkUnitScheduled,
    WorkUnitSubmitted,
)
from onceflow.streams.ids import derive_event_id
from onceflow.streams.scheduler._impl.placement import PlacementRequest, Streak, place
from onceflow.streams.scheduler._impl.retry import retry_delay_ms
from onceflow.streams.scheduler._impl.view import ClusterView
from onceflow.streams.settings import BillingSettings, OnceflowSettings, SchedulerSettings
from onceflow.streams.topics.catalog import TopicCatalog
from onceflow.streams.types import Reducer, Routed, State

__all__ = [
    "TERMINAL",
    "Scheduler",
    "estimated_cost",
    "idempotency_key_for",
    "payload_digest",
    "unit_key",
]

TERMINAL = frozenset({"completed", "failed", "rejected", "cancelled"})
#: how many placement candidates a decision record keeps (the best ones)
RECORDED_CANDIDATES = 8
_PLACEMENT = "placement"
_FAR_FUTURE = 10**13 - 1  # the largest 13-digit time: "no entry at all"
_ENVELOPE = frozenset(
    {"event_id", "event_type", "occurred_at", "causation_id", "schema_version"}
)


_QUEUE = "queue"
_EMPTY_QUEUE: dict[str, Any] = {"deferred": 0, "throttled": 0, "scheduled": 0, "retry_wait": 0,
                                "granted": 0, "waits": [], "sampled_at": 0}
_MAX_WAITS = 512


def _queue_bucket(unit: dict[str, Any]) -> str | None:
    status = unit["status"]
    if status == "deferred":
        return "throttled" if unit.get("reason") == "throttled" else "deferred"
    return status if status in ("scheduled", "retry_wait", "granted") else None


def unit_key(work_unit_id: str) -> str:
    return f"u:{work_unit_id}"


def _deps_key(parent_id: str) -> str:
    return f"deps:{parent_id}"


def _index_key(kind: str, at: int, work_unit_id: str) -> str:
    # Zero-padded times sort as numbers, so a tick reads only what is due.
    return f"x:{kind}:{at:013d}:{work_unit_id}"


def payload_digest(event: WorkUnitSubmitted) -> str:
    """What makes two submissions of one id "the same": everything but the envelope."""
    body = event.model_dump(mode="json", exclude=set(_ENVELOPE))
    from onceflow.streams.state import serde

    return hashlib.sha256(serde.dumps(body)).hexdigest()[:32]


def idempotency_key_for(work_unit_id: str) -> str:
    """Stable across attempts: a `token` tool that honours it applies the effect once."""
    return hashlib.sha256(f"onceflow-idem\x1f{work_unit_id}".encode()).hexdigest()[:32]


def estimated_cost(event: WorkUnitSubmitted, prices: BillingSettings) -> Decimal:
    """What a unit will likely cost, at the settings' prices, for budget admission.

    CPU time is `simulated_ms` (the only duration a submission states); LLM
    tokens are the unit's `llm_tokens`, or the stub provider's estimate of
    its prompt, at the default model's input price.
    """
    cpu = Decimal(event.simulated_ms) / 1000 * prices.cpu_usd_per_second
    tokens = event.llm_tokens
    if event.kind == "llm_pod" and not tokens and event.prompt:
        tokens = math.ceil(len(event.prompt) / 4)
    return cpu + Decimal(tokens) * prices.default_model.input_usd_per_1k / 1000


class Scheduler(Reducer):
    name = "scheduler"

    def __init__(
        self,
        settings: OnceflowSettings,
        view: ClusterView | None = None,
        catalog: TopicCatalog | None = None,
    ) -> None:
        self.cfg: SchedulerSettings = settings.scheduler
        self.billing: BillingSettings = settings.billing
        self.view = view or ClusterView()
        self.catalog = catalog or TopicCatalog(settings)
        self._dispatch = self.catalog["dispatch"]
        self._reports = self.catalog["reports"]
        self._outcomes = self.catalog["outcomes"]
        self._queue = self.catalog["queue"]
        # Which view version each partition's deferred units were last
        # examined against; not state: it only saves work, facts stay the same.
        self._examined: dict[int, int] = {}
        self._floors = _IndexFloors()
        # The digest of the submission just decided, so evolving its admitted
        # copy does not hash the payload a second time.
        self._digest_memo: tuple[str, str] = ("", "")

    # -- global tables ---------------------------------------------------------------

    def observe(self, event: Event) -> None:
        self.view.observe(event)

    # -- decide ----------------------------------------------------------------------

    def decide(self, state: State, event: Event) -> Sequence[Event]:
        if isinstance(event, WorkUnitSubmitted):
            return self._on_submitted(state, event)
        if isinstance(event, ClaimRequested):
            return self._on_claim(state, event)
        if isinstance(event, EffectStaged):
            return self._on_staged(state, event)
        if isinstance(event, WorkUnitCompleted):
            return self._on_completed(state, event)
        if isinstance(event, WorkUnitFailed):
            return self._on_failed(state, event)
        if isinstance(event, ClockTick):
            return self._on_tick(state, event)
        if isinstance(event, WorkUnitDependencyRegistered):
            return self._on_dependency_registered(state, event)
        if isinstance(event, WorkUnitDependencyResolved):
            return self._on_dependency_resolved(state, event)
        if isinstance(event, ControlOperatorResolved):
            return self._on_operator(state, event)
        if isinstance(event, ControlSessionCancelRequested):
            return self._on_cancel(state, event)
        return ()

    def _over_budget(self, event: WorkUnitSubmitted) -> str:
        """Why a prepaid tenant cannot afford this unit ("" when it can, or is not prepaid).

        The reason records the inputs (credit, charged, estimate) because the
        wallets are a global table, not part of this partition's log.
        """
        credit = self.billing.prepaid_credits.get(event.tenant_id)
        if credit is None:
            return ""
        charged = self.view.charged_to(event.tenant_id)
        estimate = estimated_cost(event, self.billing)
        balance = credit - charged
        if balance - estimate >= 0:
            return ""
        return (f"tenant {event.tenant_id}: balance {balance:f} USD (credit {credit:f} - charged "
                f"{charged:f}) cannot cover the unit's estimated {estimate:f} USD; add prepaid "
                "credit (ONCEFLOW_BILLING__PREPAID_CREDITS) to admit more work")

    def _envelope(self, unit: dict[str, Any], cause: Event, role: str, at: int) -> dict[str, Any]:
        # The unit is part of the role: one tick decides for many units.
        return {
            "event_id": derive_event_id(cause.event_id, f"{role}:{unit['id']}"),
            "occurred_at": at,
            "tenant_id": unit["tenant"],
            "execution_session_id": unit["session"],
            "work_unit_id": unit["id"],
            "causation_id": cause.event_id,
        }

    # submit ---------------------------------------------------------------------------

    def _on_submitted(self, state: State, event: WorkUnitSubmitted) -> Sequence[Event]:
        wu = event.work_unit_id
        if not wu:
            raise ValueError("workunit.submitted without work_unit_id")
        existing = state.get(unit_key(wu))
        digest = payload_digest(event)
        if existing is not None:
            if existing["hash"] == digest:
                return ()  # the same unit again: it runs once
            return (WorkUnitRejected(
                **self._envelope(existing, event, "duplicate", event.occurred_at),
                reason_code="duplicate_id_different_payload",
                reason=f"work unit {wu} was already submitted with a different payload; "
                       "submit the new payload under a new work_unit_id",
                decided_at=event.occurred_at,
            ),)
        admitted = event.model_copy(update={
            "event_id": derive_event_id(event.event_id, "admitted"),
            "causation_id": event.event_id,
        })
        self._digest_memo = (admitted.event_id, digest)
        unit = _new_unit(event, digest)
        facts: list[Event] = [admitted]
        now = event.occurred_at
        over_budget = self._over_budget(event)
        if over_budget:
            facts.append(WorkUnitRejected(
                **self._envelope(unit, event, "rejected", now), reason_code="BUDGET_EXCEEDED",
                reason=over_budget, decided_at=now,
            ))
            return facts
        mode = self.view.mode
        if mode == "CRITICAL" and event.priority not in self.cfg.critical_admits:
            facts.append(WorkUnitRejected(
                **self._envelope(unit, event, "rejected", now), reason_code="critical_mode",
                reason=f"admission mode is CRITICAL and priority {event.priority} is not admitted",
                decided_at=now,
            ))
            return facts
        if mode == "THROTTLED" and event.priority not in self.cfg.throttled_admits:
            facts.append(self._deferred(unit, event, now, "throttled",
                                        f"admission mode is THROTTLED; {event.priority} waits"))
            return facts
        if event.depends_on:
            facts.append(self._deferred(
                unit, event, now, "waiting_on_parents",
                f"waiting for {len(event.depends_on)} parent unit(s) to complete",
            ))
            return facts
        facts.append(self._placed(state, unit, event, now, "placed"))
        return facts

    def _deferred(
        self, unit: dict[str, Any], cause: Event, now: int, code: str, reason: str,
        role: str = "deferred", **extra: Any,
    ) -> WorkUnitDeferred:
        return WorkUnitDeferred(
            **self._envelope(unit, cause, role, now), reason_code=code, reason=reason,
            decided_at=now, **extra,
        )

    def _placed(
        self, state: State, unit: dict[str, Any], cause: Event, now: int, role: str
    ) -> WorkUnitScheduled | WorkUnitDeferred:
        """Place a unit now: a `scheduled` fact, or a `deferred` one that says why not."""
        spec = unit["spec"]
        pstate = state.get(_PLACEMENT, {"node": None, "streak": 0, "epoch": 0})
        streak = Streak(pstate["node"], pstate["streak"])
        result = place(
            PlacementRequest(spec["kind"], spec.get("region"), spec["required_concurrency"],
                             spec["min_runtime_version"]),
            self.view.placeable(), self.view.trust, now, streak, self.cfg,
        )
        if result.selected is None:
            counts = ", ".join(f"{k}={v}" for k, v in result.filter_counts.items()) or "no nodes"
            return self._deferred(unit, cause, now, "no_eligible_node",
                                  f"no node can take it ({counts})", role=role,
                                  filter_counts=result.filter_counts)
        chosen = result.selected
        self.view.note_dispatch(chosen.node_id, spec["required_concurrency"])
        parents = unit.get("parents", {})
        return WorkUnitScheduled(
            **self._envelope(unit, cause, role, now),
            selected_node_id=chosen.node_id,
            attempt_index=unit["attempt"] + 1,
            score=chosen.score,
            eligible_node_count=result.eligible,
            reason_code=result.reason_code,
            scheduling_epoch=pstate["epoch"] + 1,
            decided_at=now,
            lease_expires_at=now + self.cfg.claim_timeout_ms,
            candidates=result.candidates[:RECORDED_CANDIDATES],
            kind=spec["kind"], priority=spec["priority"], effect=spec["effect"],
            idempotency_class=spec["idempotency_class"],
            idempotency_key=idempotency_key_for(unit["id"]),
            handler=spec.get("handler"), simulated_ms=spec["simulated_ms"],
            prompt=spec.get("prompt"), model=spec.get("model"),
            input_ref=spec.get("input_ref"), parameters=spec.get("parameters", {}),
            parent_result_refs=[
                ContentRef(**parents[p]) for p in spec.get("depends_on", []) if parents.get(p)
            ],
            streak_node_id=streak.node_id, streak_length=streak.length,
            admission_mode=self.view.mode,
            tenant_correlation_id=spec.get("correlation_id"),
        )

    # claims and effects ----------------------------------------------------------------

    def _on_claim(self, state: State, event: ClaimRequested) -> Sequence[Event]:
        wu = event.work_unit_id or ""
        unit = state.get(unit_key(wu))
        reason = None
        if unit is None:
            reason = "unknown_unit"
        elif event.attempt_index != unit["attempt"]:
            reason = "stale_attempt"
        elif unit["status"] == "granted":
            reason = "already_granted"
        elif unit["status"] != "scheduled":
            reason = "not_claimable"
        elif event.node_id != unit["node"]:
            reason = "not_selected_node"
        if reason is not None:
            base = unit or {"id": wu, "tenant": event.tenant_id,
                            "session": event.execution_session_id}
            return (ClaimRejected(
                **self._envelope(base, event, "claim-rejected", event.occurred_at),
                node_id=event.node_id, attempt_index=event.attempt_index, reason_code=reason,
                incarnation=event.incarnation,
            ),)
        assert unit is not None
        now = max(event.occurred_at, unit["decided_at"])
        spec = unit["spec"]
        self.view.note_arrived(event.node_id, spec["required_concurrency"])
        return (ClaimGranted(
            **self._envelope(unit, event, "claim-granted", now),
            node_id=event.node_id, attempt_index=event.attempt_index,
            lease_expires_at=now + spec["lease_ms"] + spec["simulated_ms"],
            idempotency_key=idempotency_key_for(wu), incarnation=event.incarnation,
        ),)

    def _holds_grant(self, unit: dict[str, Any] | None, attempt: int, node: str,
                     incarnation: str) -> bool:
        return (
            unit is not None and unit["status"] == "granted" and unit["attempt"] == attempt
            and unit["node"] == node and unit["incarnation"] == incarnation
        )

    def _on_staged(self, state: State, event: EffectStaged) -> Sequence[Event]:
        unit = state.get(unit_key(event.work_unit_id or ""))
        if unit is None or unit["status"] != "granted" or unit["attempt"] != event.attempt_index:
            return ()
        if unit["staged"]:
            return ()
        return (event.model_copy(update={
            "event_id": derive_event_id(event.event_id, "staged"), "causation_id": event.event_id,
        }),)

    # settlement ----------------------------------------------------------------------

    def _on_completed(self, state: State, event: WorkUnitCompleted) -> Sequence[Event]:
        if event.accepted or event.settlement_reason:
            return ()  # a settlement (ours), not a report
        unit = state.get(unit_key(event.work_unit_id or ""))
        if unit is None:
            reason = "unknown_unit"
        elif unit["status"] in TERMINAL:
            reason = "already_settled"
        elif unit["attempt"] != event.attempt_index:
            reason = "stale_attempt"
        elif not self._holds_grant(unit, event.attempt_index, event.selected_node_id,
                                   event.incarnation):
            reason = "not_grant_holder" if unit["status"] == "granted" else "lease_expired"
        else:
            reason = None
        now = event.occurred_at
        settled = event.model_copy(update={
            "event_id": derive_event_id(event.event_id, "settled"),
            "causation_id": event.event_id,
            "accepted": reason is None,
            "settlement_reason": reason or "grant_holder",
            "submitted_at": unit["submitted_at"] if unit else 0,
        })
        if reason is not None or unit is None:
            return (settled,)
        facts: list[Event] = [settled]
        facts.extend(self._notify_dependents(state, unit, event, now, "completed",
                                             event.result_ref))
        return facts

    def _on_failed(self, state: State, event: WorkUnitFailed) -> Sequence[Event]:
        if event.reported_by_scheduler:
            return ()
        unit = state.get(unit_key(event.work_unit_id or ""))
        if not self._holds_grant(unit, event.attempt_index, event.selected_node_id,
                                 event.incarnation):
            return ()  # a fenced attempt's failure changes nothing
        assert unit is not None
        return self._attempt_ended(state, unit, event, event.occurred_at, event.error_code,
                                   event.error_reason, reported=event)

    def _attempt_ended(
        self, state: State, unit: dict[str, Any], cause: Event, now: int, error_code: str,
        error_reason: str, reported: WorkUnitFailed | None = None,
    ) -> list[Event]:
        """An attempt that held the grant ended without a result: recover by effect label."""
        spec = unit["spec"]
        failures = unit["failures"] + 1
        retryable = error_code in self.cfg.retryable_errors
        acted = unit["staged"]
        unsafe = (
            spec["effect"] == "WORLD_MUTATING" and acted
            and spec["idempotency_class"] not in ("token", "readback")
        )
        env = self._envelope(unit, cause, "attempt-failed", now)
        failed = WorkUnitFailed(
            **env, selected_node_id=unit["node"], attempt_index=unit["attempt"],
            correlation_id=spec.get("correlation_id"), error_code=error_code,
            error_reason=error_reason, retryable=retryable, final=False,
            incarnation=unit["incarnation"], reported_by_scheduler=reported is None,
        )
        if unsafe:
            return [failed, WorkUnitNeedsOperator(
                **self._envelope(unit, cause, "needs-operator", now),
                attempt_index=unit["attempt"], selected_node_id=unit["node"],
                effect=spec["effect"], idempotency_class=spec["idempotency_class"],
                reason_code="unsafe_to_retry",
                reason=f"{error_code}: a world-mutating effect was staged and its idempotency "
                       f"class '{spec['idempotency_class']}' does not make a retry safe; "
                       "resolve with retry, mark_done or abandon",
            )]
        if not retryable or failures >= spec["max_attempts"]:
            code = "non_retryable_error" if not retryable else "attempt_cap_exceeded"
            final = failed.model_copy(update={"final": True, "error_reason":
                                              f"{code}: {error_reason}".strip(": ")})
            return [final, *self._notify_dependents(state, unit, cause, now, "failed", None)]
        delay = retry_delay_ms(unit["id"], failures, self.cfg)
        return [failed, WorkUnitRetryScheduled(
            **self._envelope(unit, cause, "retry", now), attempt_index=unit["attempt"] + 1,
            delay_ms=delay, retry_at=now + delay, error_code=error_code,
            reason_code="retryable_error",
        )]

    # time --------------------------------------------------------------------------------

    def _on_tick(self, state: State, tick: ClockTick) -> Sequence[Event]:
        now = tick.occurred_at
        facts: list[Event] = []
        budget = self.cfg.deferred_per_tick
        for wu, _at in self._scan_index(state, "l", f"x:l:{now + 1:013d}", budget):
            unit = state.get(unit_key(wu))
            if unit is None:
                continue
            if unit["status"] == "scheduled":
                # Nobody claimed it: nothing ran, so any label may be placed again.
                self.view.note_arrived(unit["node"], unit["spec"]["required_concurrency"])
                facts.append(self._placed(state, unit, tick, now, f"reclaim:{unit['attempt']}"))
            elif unit["status"] == "granted":
                facts.extend(self._attempt_ended(
                    state, unit, tick, now, "node_timeout",
                    f"lease of attempt {unit['attempt']} on {unit['node']} ended at "
                    f"{unit['deadline']} without a completion",
                ))
        budget -= len(facts)
        hopeless: set[tuple[Any, ...]] = set()  # shapes that found no node in this tick
        examine_deferred = self._examined.get(tick.partition) != self.view.version
        self._examined[tick.partition] = self.view.version
        for kind, stop in (("r", f"x:r:{now + 1:013d}"), ("d", None)):
            if budget <= 0 or (kind == "d" and not examine_deferred):
                continue
            for wu, _at in self._scan_index(state, kind, stop, budget):
                unit = state.get(unit_key(wu))
                if unit is None:
                    continue
                fact = self._replace(state, unit, tick, now, hopeless)
                if fact is not None:
                    facts.append(fact)
                    budget -= 1
        sample = self._sample(state, tick, now)
        if sample is not None:
            facts.append(sample)
        return facts

    def _sample(self, state: State, tick: ClockTick, now: int) -> QueueSampled | None:
        """The partition's queue, once per `queue_sample_ms` of logged time."""
        q = state.get(_QUEUE) or _EMPTY_QUEUE
        if now - q.get("sampled_at", 0) < self.cfg.queue_sample_ms:
            return None
        waits = sorted(q["waits"])
        p95 = float(waits[min(len(waits) - 1, int(0.95 * len(waits)))]) if waits else 0.0
        live = [n for n in self.view.nodes.values()
                if now - n.last_seen <= self.cfg.node_expiry_ms]
        util = round(sum(n.utilization for n in live) / len(live), 4) if live else 0.0
        return QueueSampled(
            event_id=derive_event_id(tick.event_id, "queue-sampled"), occurred_at=now,
            causation_id=tick.event_id, partition=tick.partition,
            queue=q["deferred"] + q["scheduled"] + q["retry_wait"], deferred=q["deferred"],
            throttled=q["throttled"], running=q["granted"], wait_p95_ms=p95,
            waits_sampled=len(waits), node_count=len(live), utilization=util,
            admission_mode=self.view.mode,
        )

    def _replace(self, state: State, unit: dict[str, Any], tick: ClockTick, now: int,
                 hopeless: set[tuple[Any, ...]]) -> Event | None:
        """A due retry or a deferred unit, looked at again; None when nothing changed."""
        spec = unit["spec"]
        mode = self.view.mode
        role = f"place:{unit['attempt']}"
        deferred = unit["status"] == "deferred"
        if (deferred and unit["reason"] == "throttled" and mode == "THROTTLED"
                and spec["priority"] not in self.cfg.throttled_admits):
            return None
        shape = (spec["kind"], spec.get("region"), spec["required_concurrency"],
                 spec["min_runtime_version"])
        if deferred and shape in hopeless:
            return None
        fact = self._placed(state, unit, tick, now, role)
        if isinstance(fact, WorkUnitDeferred):
            hopeless.add(shape)
            if deferred:
                return None  # still nowhere to go; no new fact, no change
        return fact

    # dependencies -------------------------------------------------------------------------

    def _notify_dependents(
        self, state: State, unit: dict[str, Any], cause: Event, now: int, outcome: str,
        ref: ContentRef | None,
    ) -> list[Event]:
        children = state.get(_deps_key(unit["id"]), [])
        return [
            WorkUnitDependencyRegistered(
                **self._envelope(unit, cause, f"notify:{child}", now),
                child_work_unit_id=child, parent_outcome=outcome, parent_result_ref=ref,
            )
            for child in children
        ]

    def _on_dependency_registered(
        self, state: State, event: WorkUnitDependencyRegistered
    ) -> Sequence[Event]:
        if event.parent_outcome:
            return ()  # our own notice, seen again
        parent = state.get(unit_key(event.work_unit_id or ""))
        outcome, ref = "", None
        if parent is not None and parent["status"] == "completed":
            outcome = "completed"
            ref = ContentRef(**parent["result_ref"]) if parent.get("result_ref") else None
        elif parent is not None and parent["status"] in TERMINAL:
            outcome = "failed"
        return (event.model_copy(update={
            "event_id": derive_event_id(event.event_id, "recorded"),
            "causation_id": event.event_id, "parent_outcome": outcome, "parent_result_ref": ref,
        }),)

    def _on_dependency_resolved(
        self, state: State, event: WorkUnitDependencyResolved
    ) -> Sequence[Event]:
        unit = state.get(unit_key(event.work_unit_id or ""))
        if unit is None or unit["status"] != "waiting":
            return ()
        if event.parent_work_unit_id in unit["parents"]:
            return ()
        recorded = event.model_copy(update={
            "event_id": derive_event_id(event.event_id, "resolved"),
            "causation_id": event.event_id,
        })
        now = event.occurred_at
        if event.outcome != "completed":
            failed = WorkUnitFailed(
                **self._envelope(unit, event, "parent-failed", now),
                attempt_index=max(1, unit["attempt"]), error_code="parent_failed",
                error_reason=f"parent {event.parent_work_unit_id} did not complete", final=True,
                reported_by_scheduler=True,
            )
            return [recorded, failed,
                    *self._notify_dependents(state, unit, event, now, "failed", None)]
        parents = {**unit["parents"], event.parent_work_unit_id:
                   event.result_ref.model_dump(mode="json") if event.result_ref else None}
        if set(parents) < set(unit["spec"]["depends_on"]):
            return (recorded,)
        ready = {**unit, "parents": parents}
        return (recorded, self._placed(state, ready, event, now, "placed"))

    # operators and control ---------------------------------------------------------------------

    def _on_operator(self, state: State, event: ControlOperatorResolved) -> Sequence[Event]:
        unit = state.get(unit_key(event.work_unit_id or ""))
        if unit is None or unit["status"] != "needs_operator":
            return ()
        now = event.occurred_at
        if event.resolution == "retry":
            return (WorkUnitRetryScheduled(
                **self._envelope(unit, event, "retry", now), attempt_index=unit["attempt"] + 1,
                delay_ms=0, retry_at=now, reason_code="operator_retry",
            ),)
        if event.resolution == "mark_done":
            done = WorkUnitCompleted(
                **self._envelope(unit, event, "settled", now), selected_node_id=unit["node"],
                attempt_index=unit["attempt"], result_ref=event.result_ref,
                kind=unit["spec"]["kind"], accepted=True, settlement_reason="operator_mark_done",
                submitted_at=unit["submitted_at"], finished_at=now,
            )
            return [done, *self._notify_dependents(state, unit, event, now, "completed",
                                                   event.result_ref)]
        failed = WorkUnitFailed(
            **self._envelope(unit, event, "abandoned", now), selected_node_id=unit["node"],
            attempt_index=max(1, unit["attempt"]), error_code="abandoned_by_operator",
            error_reason=event.note, final=True, reported_by_scheduler=True,
        )
        return [failed, *self._notify_dependents(state, unit, event, now, "failed", None)]

    def _on_cancel(self, state: State, event: ControlSessionCancelRequested) -> Sequence[Event]:
        unit = state.get(unit_key(event.work_unit_id or ""))
        if unit is None or unit["status"] in TERMINAL or unit["status"] == "granted":
            return ()  # a granted attempt runs to its end; its result then settles it
        now = event.occurred_at
        cancelled = WorkUnitCancelled(**self._envelope(unit, event, "cancelled", now),
                                      reason=event.reason, requested_by=event.requested_by)
        return [cancelled, *self._notify_dependents(state, unit, event, now, "failed", None)]

    # -- evolve ------------------------------------------------------------------------------

    def evolve(self, state: State, fact: Event) -> None:
        if isinstance(fact, WorkUnitSubmitted):
            memo_id, memo = self._digest_memo
            unit = _new_unit(fact, memo if memo_id == fact.event_id else payload_digest(fact))
            state.set(unit_key(unit["id"]), unit)
            return
        if isinstance(fact, WorkUnitDependencyRegistered):
            key = _deps_key(fact.work_unit_id or "")
            children = [c for c in state.get(key, []) if c != fact.child_work_unit_id]
            if not fact.parent_outcome:
                children = sorted([*children, fact.child_work_unit_id])
            if children:
                state.set(key, children)
            else:
                state.delete(key)
            return
        if isinstance(fact, QueueSampled):
            q = dict(state.get(_QUEUE) or _EMPTY_QUEUE)
            state.set(_QUEUE, {**q, "waits": [], "sampled_at": fact.occurred_at})
            return
        key = unit_key(fact.work_unit_id or "")
        unit = state.get(key)
        if unit is None:
            return
        before = unit
        unit = dict(unit)
        if isinstance(fact, WorkUnitScheduled):
            pstate = state.get(_PLACEMENT, {"node": None, "streak": 0, "epoch": 0})
            streak = Streak(pstate["node"], pstate["streak"]).after(fact.selected_node_id)
            state.set(_PLACEMENT, {"node": streak.node_id, "streak": streak.length,
                                   "epoch": max(pstate["epoch"], fact.scheduling_epoch)})
            unit.update(status="scheduled", attempt=fact.attempt_index,
                        node=fact.selected_node_id, incarnation="", staged=False,
                        decided_at=fact.decided_at, deadline=fact.lease_expires_at, reason="")
            self._index(state, unit, "l", fact.lease_expires_at)
        elif isinstance(fact, WorkUnitDeferred):
            unit.update(status="waiting" if fact.reason_code == "waiting_on_parents"
                        else "deferred", reason=fact.reason_code, decided_at=fact.decided_at)
            if unit["status"] == "deferred":
                self._index(state, unit, "d", unit["submitted_at"])
            else:
                self._index(state, unit, None, 0)
        elif isinstance(fact, WorkUnitRejected):
            if fact.reason_code == "duplicate_id_different_payload":
                return  # the original unit is untouched
            unit.update(status="rejected", reason=fact.reason_code)
            self._index(state, unit, None, 0)
        elif isinstance(fact, ClaimGranted):
            unit.update(status="granted", incarnation=fact.incarnation,
                        deadline=fact.lease_expires_at, decided_at=fact.occurred_at)
            self._index(state, unit, "l", fact.lease_expires_at)
        elif isinstance(fact, EffectStaged):
            unit.update(staged=True)
        elif isinstance(fact, WorkUnitCompleted):
            if not fact.accepted:
                return
            unit.update(status="completed", reason=fact.settlement_reason,
                        result_ref=fact.result_ref.model_dump(mode="json")
                        if fact.result_ref else None)
            self._index(state, unit, None, 0)
        elif isinstance(fact, WorkUnitFailed):
            if fact.final:
                unit.update(status="failed", reason=fact.error_code)
                self._index(state, unit, None, 0)
            else:
                unit.update(failures=unit["failures"] + 1, reason=fact.error_code)
        elif isinstance(fact, WorkUnitRetryScheduled):
            # The next attempt's number is taken now, so the ended attempt's
            # late claims and results are fenced off at once.
            # Only a `scheduled` unit takes claims and only a `granted` one takes
            # results, so the ended attempt is fenced off from here on.
            unit.update(status="retry_wait", attempt=fact.attempt_index - 1, staged=False,
                        reason=fact.reason_code, incarnation="")
            self._index(state, unit, "r", fact.retry_at)
        elif isinstance(fact, WorkUnitNeedsOperator):
            unit.update(status="needs_operator", reason=fact.reason_code)
            self._index(state, unit, None, 0)
        elif isinstance(fact, WorkUnitCancelled):
            unit.update(status="cancelled", reason="cancelled")
            self._index(state, unit, None, 0)
        elif isinstance(fact, WorkUnitDependencyResolved):
            parents = dict(unit["parents"])
            parents[fact.parent_work_unit_id] = (
                fact.result_ref.model_dump(mode="json") if fact.result_ref else None
            )
            unit.update(parents=parents)
        else:
            return
        if unit["status"] != before["status"] or unit.get("reason") != before.get("reason"):
            self._count(state, before, unit, fact)
        state.set(key, unit)

    def _count(self, state: State, before: dict[str, Any], after: dict[str, Any],
               fact: Event) -> None:
        """Keep the partition's queue counters (what `QueueSampled` reports) in step."""
        q = dict(state.get(_QUEUE) or _EMPTY_QUEUE)
        for unit, step in ((before, -1), (after, 1)):
            bucket = _queue_bucket(unit)
            if bucket is not None:
                q[bucket] = max(0, q[bucket] + step)
        if isinstance(fact, ClaimGranted):
            waits = [*q["waits"], max(0, fact.occurred_at - after["submitted_at"])]
            q["waits"] = waits[-_MAX_WAITS:]
        state.set(_QUEUE, q)

    def _index(self, state: State, unit: dict[str, Any], kind: str | None, at: int) -> None:
        """Move the unit's single index entry (lease, retry or deferred) to a new place."""
        old = unit.get("index")
        new = _index_key(kind, at, unit["id"]) if kind is not None else None
        if old and old != new:
            state.delete(old)
        if new and kind is not None:
            state.set(new, 1)
            self._floors.lower(state, kind, at)
        unit["index"] = new

    def _scan_index(self, state: State, kind: str, stop: str | None,
                    budget: int) -> list[tuple[str, int]]:
        """Up to `budget` index entries below `stop`, oldest first, as (work unit, time).

        The scan starts at the floor this process knows for the partition:
        entries that were due and handled leave tombstones in RocksDB, and
        walking past thousands of them on every tick is what made a scheduler
        with a long history slow.
        """
        prefix = f"x:{kind}:"
        floor = self._floors.get(state, kind)
        start = None if floor is None else f"{prefix}{floor:013d}"
        rows = []
        for key, _ in state.items(prefix, stop=stop, start=start):
            _, _, at, wu = key.split(":", 3)
            rows.append((wu, int(at)))
            if len(rows) > budget:
                break
        if len(rows) <= budget:
            # Everything live below `stop` is in `rows` and about to be handled;
            # what handling puts back lowers the floor again (see `_index`).
            if stop is not None:
                self._floors.set(state, kind, int(stop.rsplit(":", 1)[1]))
            else:
                self._floors.set(state, kind, rows[0][1] if rows else _FAR_FUTURE)
        return rows[:budget]

    # -- route -------------------------------------------------------------------------------

    def route(self, fact: Event) -> Sequence[Routed]:
        if isinstance(fact, WorkUnitScheduled):
            # The node needs the work, not the decision record: the candidates
            # stay in the fact topic and the dispatch copy is lighter to move.
            slim = fact.model_copy(update={"candidates": []})
            return (self._to_node(slim, fact.selected_node_id),)
        if isinstance(fact, ClaimGranted | ClaimRejected):
            return (self._to_node(fact, fact.node_id),)
        if isinstance(fact, QueueSampled):
            return (Routed(self._queue.name, fact, 0),)
        if (isinstance(fact, WorkUnitCompleted) and fact.accepted
                and fact.settlement_reason == "grant_holder") or (
                isinstance(fact, WorkUnitFailed) and fact.selected_node_id):
            # How the attempt ended, to the node's partition of `outcomes`: trust
            # scoring reads it there beside the node's heartbeats.
            node = fact.selected_node_id
            return (Routed(self._outcomes.name, fact, self._outcomes.partition_of(node)),)
        if isinstance(fact, WorkUnitSubmitted):
            return tuple(
                Routed(self._reports.name, WorkUnitDependencyRegistered(
                    event_id=derive_event_id(fact.event_id, f"depends-on:{parent}"),
                    occurred_at=fact.occurred_at, tenant_id=fact.tenant_id,
                    execution_session_id=fact.execution_session_id, work_unit_id=parent,
                    causation_id=fact.event_id, child_work_unit_id=fact.work_unit_id or "",
                ), self._reports.partition_of(parent))
                for parent in sorted(set(fact.depends_on))
            )
        if isinstance(fact, WorkUnitDependencyRegistered) and fact.parent_outcome:
            child = fact.child_work_unit_id
            return (Routed(self._reports.name, WorkUnitDependencyResolved(
                event_id=derive_event_id(fact.event_id, "resolved-notice"),
                occurred_at=fact.occurred_at, tenant_id=fact.tenant_id,
                execution_session_id=fact.execution_session_id, work_unit_id=child,
                causation_id=fact.event_id, parent_work_unit_id=fact.work_unit_id or "",
                outcome="completed" if fact.parent_outcome == "completed" else "failed",
                result_ref=fact.parent_result_ref,
            ), self._reports.partition_of(child)),)
        return ()

    def _to_node(self, fact: Event, node_id: str) -> Routed:
        return Routed(self._dispatch.name, fact, self._dispatch.partition_of(node_id))


def _new_unit(event: WorkUnitSubmitted, digest: str) -> dict[str, Any]:
    spec = event.model_dump(mode="json", exclude=set(_ENVELOPE) | {
        "tenant_id", "execution_session_id", "work_unit_id"})
    return {
        "id": event.work_unit_id, "tenant": event.tenant_id,
        "session": event.execution_session_id, "hash": digest, "spec": spec,
        "status": "submitted", "reason": "", "attempt": 0, "node": "", "incarnation": "",
        "failures": 0, "staged": False, "deadline": 0, "decided_at": event.occurred_at,
        "submitted_at": event.occurred_at, "index": None, "parents": {}, "result_ref": None,
    }


class _IndexFloors:
    """Per partition state and index kind: a time at or below every live index entry.

    A cache in this process, not state: unknown (scan from the start) for a
    state it has not scanned yet, so a restart or a reassignment is safe.
    """

    def __init__(self) -> None:
        self._by_state: weakref.WeakKeyDictionary[Any, dict[str, int]] = (
            weakref.WeakKeyDictionary())

    def get(self, state: State, kind: str) -> int | None:
        return self._by_state.get(state, {}).get(kind)

    def set(self, state: State, kind: str, at: int) -> None:
        self._by_state.setdefault(state, {})[kind] = at

    def lower(self, state: State, kind: str, at: int) -> None:
        floors = self._by_state.get(state)
        if floors is not None and kind in floors and at < floors[kind]:
            floors[kind] = at
