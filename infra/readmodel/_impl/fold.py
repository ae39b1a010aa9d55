"""The read model's fold: every fact a reader asks about, kept as rows keyed for its query.

A pure reducer over a `State` (RocksDB in the views service, a `MemoryState` in
tests and the simulation): `ReadModelFold.apply(state, event, raw)` folds one
record of any topic the model reads, in the order its partition has it. The
rows it keeps are what the API, the dashboard, the client and the CLI read, so
a read costs a few key lookups however long the log is:

- a unit (`u`): its step as `onceflow.infra.sessions.advance_step` leaves it,
  its tenant and session, and its facts as the log wrote them (`h`, for `why`
  and for its state at any logged time); billed cost with its times (`hc`);
- a session (`s`): its controls and limits (`apply_session_fact`), its steps
  in submission order (`su`), how many are in each state (so its state and
  progress need no scan of its steps), its session-level facts (`sh`);
- the inbox (`ib`): what waits for a person, by the rule `inbox_change` states;
- the limiter's state (`lim`, folded by the limiter's own `evolve`);
- wallets' partials, with each partial's history by the latest logged time it
  reflects (`wp`, `wh`: a wallet at T is its partials at their last update
  stamped at or before T); spend per tenant
  and model (`sp`); nodes' heartbeats (`n`), trust (`t`), provider pauses
  (`p`), the autoscaler's last word (`cap`);
- units by state (`g/units`) with the history of every change of state, by
  minute of logged time (`sb`) and one by one (`sd`), so "how many were in each
  state at T" sums whole minutes and scans one.

Facts of another topic about an entity not seen yet (a line item read before
its unit's submission, while the model is rebuilt from every topic at once)
wait under `pend` and are folded when the entity arrives.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

from onceflow.infra.sessions import (
    SESSION_ENDED,
    STEP_ENDED,
    SessionView,
    Step,
    advance_step,
    applies_to,
    apply_session_fact,
    session_of_fact,
    session_state,
    waits_for_a_person,
)
from onceflow.schemas import (
    CapacityAdmissionModeChanged,
    CapacityScaleRequested,
    CapacityWindowClosed,
    ControlApplied,
    Event,
    LedgerLineItem,
    NodeHeartbeat,
    ProviderScopePaused,
    Scope,
    SessionLimitCrossed,
    SessionLimitsChanged,
    SingleObjectCodec,
    TrustScoreUpdated,
    WalletUpdated,
    WorkUnitCompleted,
    WorkUnitDeferred,
    WorkUnitNeedsOperator,
    WorkUnitRejected,
    WorkUnitSubmitted,
)
from onceflow.streams.scheduler import PROGRESS_EVENT_TYPES
from onceflow.streams.topics import TopicRole
from onceflow.streams.types import State

__all__ = [
    "MINUTE_MS",
    "SEP",
    "PrefixedState",
    "ReadModelFold",
    "decode_raw",
    "encode_raw",
    "inbox_change",
    "key",
    "session_summary",
    "wallet_scope",
]

#: between the parts of a key: ids may hold ':', '.', '-' and '/', never this
SEP = "\x1f"
MINUTE_MS = 60_000
#: how many of the autoscaler's last scale requests and mode changes are kept
_CAPACITY_KEPT = 50
#: the facts that move a unit in or out of the inbox (the others leave it as it is)
_INBOX_MOVES = frozenset({"workunit.scheduled", "workunit.completed", "workunit.failed",
                          "workunit.cancelled", "workunit.retry.scheduled",
                          "workunit.needs_operator", "workunit.deferred"})


def key(*parts: str) -> str:
    return SEP.join(parts)


def encode_raw(raw: bytes) -> str:
    """A record's bytes as a state value (JSON-shaped)."""
    return base64.b64encode(raw).decode()


def decode_raw(value: str) -> bytes:
    return base64.b64decode(value)


def wallet_scope(wallet_id: str) -> str:
    """The wallet a partial belongs to, by its scope (`<scope>@<ledger partition>`)."""
    return str(Scope.parse(wallet_id.rsplit("@", 1)[0]))


class PrefixedState:
    """One namespace of a `State`: the limiter's own state, kept beside the rows."""

    def __init__(self, state: State, prefix: str) -> None:
        self._state, self._prefix = state, prefix

    def get(self, k: str, default: Any = None) -> Any:
        return self._state.get(self._prefix + k, default)

    def set(self, k: str, value: Any) -> None:
        self._state.set(self._prefix + k, value)

    def delete(self, k: str) -> None:
        self._state.delete(self._prefix + k)

    def __contains__(self, k: str) -> bool:
        return self._prefix + k in self._state

    def items(self, prefix: str = "", stop: str | None = None, start: str | None = None
              ) -> Iterator[tuple[str, Any]]:
        n = len(self._prefix)
        for k, v in self._state.items(self._prefix + prefix,
                                      None if stop is None else self._prefix + stop,
                                      None if start is None else self._prefix + start):
            yield k[n:], v


def inbox_change(e: Event) -> dict[str, Any] | bool | None:
    """What a unit's fact does to its place in the inbox: the item it is now (it waits for
    a person), None (it no longer waits), False (no change)."""
    if e.event_type not in _INBOX_MOVES:
        return False
    wu = e.work_unit_id or ""
    base = {"work_unit_id": wu, "tenant_id": e.tenant_id,
            "session_id": e.execution_session_id, "since": e.occurred_at, "attempt": 0,
            "node_id": "", "effect": "", "deadline": None}
    if isinstance(e, WorkUnitNeedsOperator):
        return {**base, "kind": "needs_operator", "attempt": e.attempt_index,
                "node_id": e.selected_node_id, "effect": e.effect,
                "reason": e.reason or e.reason_code,
                "resolve": f"onceflow resolve {wu} --action retry|mark_done|abandon"}
    if isinstance(e, WorkUnitDeferred) and e.reason_code == "awaiting_input":
        return {**base, "kind": "input", "reason": e.reason, "deadline": e.retry_at,
                "resolve": f"onceflow input {e.execution_session_id} {wu} --tenant "
                           f"{e.tenant_id} --file answer.json"}
    if isinstance(e, WorkUnitDeferred) and e.reason_code == "awaiting_approval":
        return {**base, "kind": "approval", "reason": e.reason, "deadline": e.retry_at,
                "resolve": f"onceflow approve {wu} | onceflow deny {wu} --reason ..."}
    if isinstance(e, WorkUnitCompleted) and not e.accepted:
        return False  # a refused result leaves the unit where it was
    return None


def _session_limit_item(e: SessionLimitCrossed) -> dict[str, Any]:
    s, t = e.execution_session_id, e.tenant_id
    return {"kind": "session_limit", "work_unit_id": "", "tenant_id": t, "session_id": s,
            "since": e.occurred_at, "attempt": 0, "node_id": "", "effect": "",
            "reason": e.detail, "deadline": None, "limit": e.limit,
            "resolve": f"onceflow session limits {s} --tenant {t} "
                       f"--{e.limit.replace('_', '-')} N | onceflow cancel --session "
                       f"{s} --tenant {t}"}


def capacity_view(cap: dict[str, Any] | None, e: Event | None) -> dict[str, Any]:
    """The autoscaler's last word (replicas, admission mode, the last window's figures, its
    recent scale requests and mode changes) after one of its facts (None: before any)."""
    cap = dict(cap or {"replicas": None, "mode": "OPEN", "window": None,
                       "scale_requests": [], "modes": []})
    if isinstance(e, CapacityWindowClosed):
        cap.update(replicas=e.replicas, mode=e.mode, window={
            "queue": e.queue_depth, "throttled": e.throttled,
            "wait_p95_ms": e.wait_p95_ms, "utilization": e.utilization,
            "decision": e.decision, "end": e.window_end})
    elif isinstance(e, CapacityScaleRequested):
        cap["scale_requests"] = [*cap["scale_requests"],
                                 f"{e.previous_replicas}->{e.new_replicas}"][-_CAPACITY_KEPT:]
    elif isinstance(e, CapacityAdmissionModeChanged):
        cap["modes"] = [*cap["modes"], e.new_mode][-_CAPACITY_KEPT:]
    return cap


def session_summary(row: dict[str, Any]) -> dict[str, Any]:
    """A session row as `SessionView.as_json` shows a session (without its steps)."""
    counts: dict[str, int] = row["counts"]
    return {"tenant_id": row["tenant_id"], "session_id": row["session_id"],
            "state": session_state(counts, row["people"], row["paused"], row["cancelled_by"]),
            "steps": row["steps"],
            "done": sum(n for s, n in counts.items() if s in STEP_ENDED),
            "cost_usd": row["cost_usd"], "started_at": row["started_at"],
            "last_at": row["last_at"], "paused": row["paused"],
            "cancelled_by": row["cancelled_by"], "limits": row["limits"],
            "at_limit": row["at_limit"], "warnings": row["warnings"]}


def _bump(counts: dict[str, int], state: str, by: int) -> None:
    n = counts.get(state, 0) + by
    if n:
        counts[state] = n
    else:
        counts.pop(state, None)


class ReadModelFold:
    """Folds the facts of every topic the read model reads into its rows.

    `limiter`: the limiter as the deployment configures it, whose `evolve` keeps
    its state here as it keeps its own (slots, queues, rate windows, budgets).
    """

    def __init__(self, limiter: Any, codec: SingleObjectCodec | None = None) -> None:
        self.limiter = limiter
        self.codec = codec or SingleObjectCodec()
        self._where = ""

    def apply(self, state: State, topic: TopicRole, event: Event, raw: bytes,
              where: tuple[int, int] = (0, 0)) -> None:
        """Fold one record of `topic` (`raw`, as the log holds it, is what `why` and `at`
        read back) at `where` (its partition and offset). Facts about one entity from
        several partitions are kept by logged time, then by where they are in the log:
        in an order that does not depend on how the partitions' reads interleave."""
        self._where = f"{topic}/{where[0]:04d}/{where[1]:012d}"
        if topic == "flow":  # the limiter's facts, folded as the limiter folds them
            self.limiter.evolve(PrefixedState(state, "lim" + SEP), event)
            if isinstance(event, SessionLimitCrossed | SessionLimitsChanged):
                self._session_fact(state, event, raw)
        elif isinstance(event, WorkUnitSubmitted):
            self._submitted(state, event, raw)
        elif isinstance(event, ControlApplied):
            self._control(state, event, raw)
        elif isinstance(event, LedgerLineItem):
            self._line_item(state, event, raw)
        elif isinstance(event, WalletUpdated):
            self._wallet(state, event)
        elif isinstance(event, NodeHeartbeat):
            current = state.get(key("n", event.node_id))
            if current is None or current["occurred_at"] <= event.occurred_at:
                state.set(key("n", event.node_id), event.model_dump(mode="json"))
        elif isinstance(event, TrustScoreUpdated):
            state.set(key("t", event.node_id), event.model_dump(mode="json"))
        elif isinstance(event, ProviderScopePaused):
            current = state.get(key("p", event.scope))
            if current is None or current["paused_until"] < event.paused_until:
                state.set(key("p", event.scope), event.model_dump(mode="json"))
        elif isinstance(event, CapacityWindowClosed | CapacityScaleRequested
                        | CapacityAdmissionModeChanged):
            self._capacity(state, event)
        elif event.work_unit_id and topic == "workunits":
            self._unit_fact(state, event, raw)

    # -- units ---------------------------------------------------------------------------

    def _submitted(self, state: State, e: WorkUnitSubmitted, raw: bytes) -> None:
        wu = e.work_unit_id or ""
        row = state.get(key("u", wu))
        if row is not None and row["admitted"]:
            row = dict(row)
            self._append_history(state, wu, row, e, raw)  # a resend, on the log: why shows it
            state.set(key("u", wu), row)
            return
        before = None if row is None else row["state"]
        facts = 0 if row is None else row["facts"]
        row = {**Step(wu, e.kind, list(e.depends_on), e.occurred_at).to_row(),
               "tenant_id": e.tenant_id, "session_id": e.execution_session_id,
               "admitted": True, "facts": facts, "last_at": 0, "stamp": e.occurred_at}
        self._append_history(state, wu, row, e, raw)
        for _, earlier in state.items(key("h", wu, "b")):  # facts read before it
            fact = self.codec.decode(decode_raw(earlier))
            if not isinstance(fact, ControlApplied):
                row["last_at"] = max(row["last_at"], fact.occurred_at)
        state.set(key("u", wu), row)
        self._count(state, e.occurred_at, wu, row["facts"], before, "submitted")
        tenant, name = e.tenant_id, e.execution_session_id
        session, created = self._session_row(state, tenant, name, e.occurred_at)
        if e.occurred_at < session["started_at"]:  # the first submission, in logged time
            state.delete(key("srec", f"{session['started_at']:015d}", tenant, name))
            session["started_at"] = e.occurred_at
            state.set(key("srec", f"{e.occurred_at:015d}", tenant, name), 1)
        state.set(key("su", tenant, name, f"{e.occurred_at:015d}", wu), wu)
        session["steps"] += 1
        session["last_at"] = max(session["last_at"], row["last_at"])
        _bump(session["counts"], "submitted", 1)
        if e.session_limits is not None and not session["limits"]:
            session["limits"] = e.session_limits.model_dump(mode="json", exclude_none=True)
        self._save_session(state, session)
        for pk, pending in list(state.items(key("pend", wu, ""))):
            state.delete(pk)
            self._line_item(state, LedgerLineItem.model_validate(pending), b"")
        if created:
            for pk, pending in list(state.items(key("pend", "", tenant, name, ""))):
                state.delete(pk)
                self._where = pk.rsplit(SEP, 1)[1]
                self._session_fact(state, self.codec.decode(decode_raw(pending)),
                                   decode_raw(pending))

    def _unit_fact(self, state: State, e: Event, raw: bytes) -> None:
        wu = e.work_unit_id or ""
        row = state.get(key("u", wu))
        if row is None:
            if e.event_type not in PROGRESS_EVENT_TYPES:
                # about a unit read before its submission (a child's record about its
                # parent, from the child's partition): kept, and counted when it comes
                self._append_history(state, wu, {"facts": 0}, e, raw)
                return
            if not isinstance(e, WorkUnitRejected):
                return  # nothing of it was admitted or refused: no reader asks for it
            # A submission refused at admission: a unit in no session, counted as rejected.
            row = {**Step(wu, "", [], e.occurred_at, "rejected", e.reason_code,
                          finished_at=e.occurred_at).to_row(),
                   "tenant_id": e.tenant_id, "session_id": e.execution_session_id,
                   "admitted": False, "facts": 0, "last_at": e.occurred_at,
                   "stamp": e.occurred_at}
            self._append_history(state, wu, row, e, raw)
            state.set(key("u", wu), row)
            self._count(state, e.occurred_at, wu, row["facts"], None, "rejected")
            return
        row = dict(row)
        self._append_history(state, wu, row, e, raw)
        if e.event_type not in PROGRESS_EVENT_TYPES:
            # Facts that do not move the unit (claims, leases, dependencies, controls):
            # kept for `why`, and they make it and its session active later.
            if not isinstance(e, ControlApplied) and row["admitted"] \
                    and e.occurred_at > row["last_at"]:
                row["last_at"] = e.occurred_at
                state.set(key("u", wu), row)
                session = state.get(key("s", row["tenant_id"], row["session_id"]))
                if session is not None and e.occurred_at > session["last_at"]:
                    session["last_at"] = e.occurred_at
                    self._save_session(state, session)
            return
        if isinstance(e, WorkUnitCompleted) and not e.accepted:
            self._global(state, lambda g: g.__setitem__(
                "rejected_completions", g["rejected_completions"] + 1))
        if not row["admitted"]:
            state.set(key("u", wu), row)
            return
        step = Step.from_row(row)
        before = (step.state, step.reason)
        advance_step(step, e)
        # the unit's clock: a fact stamped before one it follows changes the unit then
        row["stamp"] = stamp = max(row["stamp"], e.occurred_at)
        row.update(step.to_row())
        row["last_at"] = max(row["last_at"], e.occurred_at)
        change = inbox_change(e)
        if change is not False:
            ik = key("ib", row["tenant_id"], wu)
            if change is not None:
                state.set(ik, change)
                row["in_inbox"] = True
            elif row.get("in_inbox"):
                # deleted only when there: a tombstone per moved unit would be walked by
                # every scan of the inbox
                state.delete(ik)
                row["in_inbox"] = False
        state.set(key("u", wu), row)
        session, _ = self._session_row(state, row["tenant_id"], row["session_id"], 0)
        session["last_at"] = max(session["last_at"], e.occurred_at)
        if (step.state, step.reason) != before:
            if step.state != before[0]:
                self._count(state, stamp, wu, row["facts"], before[0], step.state,
                            step.node if step.state == "completed" else None)
                _bump(session["counts"], before[0], -1)
                _bump(session["counts"], step.state, 1)
            session["people"] += (int(waits_for_a_person(step.state, step.reason))
                                  - int(waits_for_a_person(*before)))
        self._save_session(state, session)

    def _append_history(self, state: State, wu: str, row: dict[str, Any], e: Event,
                        raw: bytes) -> None:
        """Keep the fact for `why` and `at`. The facts that move the unit are its own
        partition's, kept in that order (`a`); others about it (a child's dependency
        records, written by the child's partition) come in no set order, so they are kept
        by logged time and id (`b`), and a rebuild keeps the same rows."""
        if e.event_type in PROGRESS_EVENT_TYPES:
            state.set(key("h", wu, f"a{row['facts']:06d}"), encode_raw(raw))
            row["facts"] += 1
        else:
            state.set(key("h", wu, f"b{e.occurred_at:015d}", self._where), encode_raw(raw))

    def _line_item(self, state: State, item: LedgerLineItem, raw: bytes) -> None:
        seen = key("li", item.line_item_id)
        if raw and seen in state:
            return  # the ledger wrote it twice (a redelivery): billed once
        wu = item.work_unit_id or ""
        row = state.get(key("u", wu)) if wu else None
        if raw:
            state.set(seen, 1)
            if item.billed:
                sk = key("sp", item.tenant_id, item.model or "cpu")
                usd, tokens, n = state.get(sk, ["0", 0, 0])
                state.set(sk, [f"{Decimal(usd) + item.total_usd:f}", tokens + item.llm_tokens,
                               n + 1])
        if not item.billed or not wu:
            return
        if row is None:
            # Read before its unit's submission (another topic): folded when that comes.
            state.set(key("pend", wu, item.line_item_id), item.model_dump(mode="json"))
            return
        if not row["admitted"]:
            return
        row = dict(row)
        row["cost_usd"] = f"{Decimal(row['cost_usd']) + item.total_usd:f}"
        state.set(key("u", wu), row)
        state.set(key("hc", wu, item.line_item_id), [item.occurred_at, f"{item.total_usd:f}"])
        session, _ = self._session_row(state, row["tenant_id"], row["session_id"], 0)
        session["cost_usd"] = f"{Decimal(session['cost_usd']) + item.total_usd:f}"
        self._save_session(state, session)

    # -- sessions ------------------------------------------------------------------------

    def _session_row(self, state: State, tenant: str, session: str, at: int
                     ) -> tuple[dict[str, Any], bool]:
        """The session's row to change (and whether it is new, first seen at `at`)."""
        row = state.get(key("s", tenant, session))
        if row is not None:
            return dict(row, counts=dict(row["counts"])), False
        self._global(state, lambda g: g.__setitem__("sessions", g["sessions"] + 1))
        state.set(key("srec", f"{at:015d}", tenant, session), 1)
        return {"tenant_id": tenant, "session_id": session, "started_at": at, "last_at": 0,
                "paused": False, "cancelled_by": "", "cancel_mark": "", "limits": {},
                "at_limit": "",
                "warnings": [], "steps": 0, "counts": {}, "people": 0,
                "cost_usd": "0"}, True

    def _save_session(self, state: State, row: dict[str, Any]) -> None:
        state.set(key("s", row["tenant_id"], row["session_id"]), row)
        ok = key("sopen", row["tenant_id"], row["session_id"])
        ended = session_state(row["counts"], row["people"], row["paused"],
                              row["cancelled_by"]) in SESSION_ENDED
        if ended == (ok in state):  # an index of the open ones: changed only on a change
            if ended:
                state.delete(ok)
            else:
                state.set(ok, 1)

    def _control(self, state: State, e: ControlApplied, raw: bytes) -> None:
        state.set(key("ca", e.control_id, e.event_id), e.model_dump(mode="json"))
        if e.work_unit_id:
            self._unit_fact(state, e, raw)
        if session_of_fact(e) is not None:
            self._session_fact(state, e, raw)

    def _session_fact(self, state: State, e: Event, raw: bytes) -> None:
        target = session_of_fact(e)
        if isinstance(e, SessionLimitsChanged) and e.causation_id:
            state.set(key("lc", e.causation_id), e.model_dump(mode="json"))
        if target is None:
            return
        tenant, name = target
        row = state.get(key("s", tenant, name))
        # Keyed by logged time and id, not arrival: a rebuild that reads the topics
        # interleaved otherwise keeps the same rows.
        at = key(f"{e.occurred_at:015d}", self._where)
        if row is None:
            # Read before the session's first submission (another topic or partition).
            state.set(key("pend", "", tenant, name, at), encode_raw(raw))
            return
        row = dict(row)
        view = SessionView(tenant, name, started_at=row["started_at"],
                           paused=row["paused"], cancelled_by=row["cancelled_by"],
                           limits=row["limits"], at_limit=row["at_limit"],
                           warnings=list(row["warnings"]), cancel_mark=row["cancel_mark"])
        if not applies_to(view, e):
            return
        apply_session_fact(view, e)
        row.update(paused=view.paused, cancelled_by=view.cancelled_by, limits=view.limits,
                   at_limit=view.at_limit, warnings=view.warnings,
                   cancel_mark=view.cancel_mark)
        state.set(key("sh", tenant, name, at), encode_raw(raw))
        self._save_session(state, row)
        # Parked at a limit: in the inbox until new limits resume it or it is cancelled
        # (whichever order the topics are read in).
        ik = key("ib", tenant, SEP + str(Scope.of_session(tenant, name)))
        if view.cancelled_by or (isinstance(e, SessionLimitsChanged) and e.resumed):
            state.delete(ik)
        elif isinstance(e, SessionLimitCrossed) and e.threshold == "reached" \
                and e.on_limit == "park":
            state.set(ik, _session_limit_item(e))

    # -- the rest --------------------------------------------------------------------------

    def _wallet(self, state: State, e: WalletUpdated) -> None:
        """A wallet's partial, and its history stamped with the latest logged time it
        reflects (its line items arrive out of time order; the stamp never goes back)."""
        partial = key(wallet_scope(e.wallet_id), e.wallet_id)
        value = e.model_dump(mode="json")
        state.set(key("wp", partial), value)
        stamp = max(state.get(key("wc", partial), 0), e.occurred_at)
        state.set(key("wc", partial), stamp)
        state.set(key("wh", partial, f"{stamp:015d}"), value)

    def _capacity(self, state: State, e: Event) -> None:
        state.set("cap", capacity_view(state.get("cap"), e))

    def _global(self, state: State, change: Any) -> None:
        # Changed in place and set again: one small row, set on every change of state.
        g = state.get("g/units") or {"by_state": {}, "completed_by_node": {},
                                     "rejected_completions": 0, "sessions": 0}
        change(g)
        state.set("g/units", g)

    def _count(self, state: State, at: int, wu: str, seq: int, before: str | None,
               after: str, completed_on: str | None = None) -> None:
        """A unit changed state at logged time `at` (completed on a node): the counts now,
        and their history."""
        def move(g: dict[str, Any]) -> None:
            if before is not None:
                _bump(g["by_state"], before, -1)
            _bump(g["by_state"], after, 1)
            if completed_on is not None:
                _bump(g["completed_by_node"], completed_on, 1)

        self._global(state, move)
        bucket = key("sb", f"{at // MINUTE_MS:012d}")
        deltas = state.get(bucket) or {}
        if before is not None:
            _bump(deltas, before, -1)
        _bump(deltas, after, 1)
        state.set(bucket, deltas)
        state.set(key("sd", f"{at:015d}", wu, f"{seq:06d}"), [before, after])
