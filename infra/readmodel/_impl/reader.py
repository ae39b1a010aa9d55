"""Questions to the read model: a unit, a session, the inbox, wallets, units by state, nodes,
limits, a unit's decisions; now, or as the log held them at a logged time.

A `ReadModelReader` reads one `State` (a RocksDB snapshot in the views service,
so a request sees one checkpoint throughout; a `MemoryState` in tests). Every
answer is a few key lookups or one prefix scan of the entity asked about: none
grows with the history of other units. `tenant` is the caller's: it sees its
own, and the platform's operator (`PLATFORM_TENANT`) sees every tenant's.
"""

from __future__ import annotations

from collections import Counter
from decimal import Decimal
from typing import Any

from onceflow.infra.readmodel._impl.fold import (
    MINUTE_MS,
    SEP,
    PrefixedState,
    capacity_view,
    decode_raw,
    key,
    session_summary,
)
from onceflow.infra.sessions import (
    SessionView,
    Step,
    advance_step,
    applies_to,
    apply_session_fact,
)
from onceflow.schemas import (
    PLATFORM_TENANT,
    ControlApplied,
    Event,
    NodeHeartbeat,
    SessionLimits,
    SessionLimitsChanged,
    SingleObjectCodec,
    TrustScoreUpdated,
    WalletUpdated,
    WorkUnitSubmitted,
    acts_for,
)
from onceflow.streams.types import State

__all__ = ["ReadModelReader"]


def _sees(tenant: str | None, owner: str) -> bool:
    return tenant is None or acts_for(tenant, owner)


def _last_below(state: State, prefix: str, stop: str) -> Any:
    """The value of the highest key starting with `prefix` and below `stop` (None: none)."""
    reverse = getattr(state, "items_reversed", None)
    if reverse is not None:
        for _, value in reverse(prefix, stop):
            return value
        return None
    found = None
    for _, value in state.items(prefix, stop):
        found = value
    return found


class ReadModelReader:
    """Answers from one view of the read model's state."""

    def __init__(self, state: State, limiter: Any, codec: SingleObjectCodec | None = None
                 ) -> None:
        self.state = state
        self.limiter = limiter
        self.codec = codec or SingleObjectCodec()

    # -- where it is -------------------------------------------------------------------

    def position(self) -> dict[str, int]:
        """The offset after the last record folded, per `topic:partition`."""
        return {k.split(SEP, 1)[1].replace(SEP, ":"): v
                for k, v in self.state.items(key("pos", ""))}

    # -- units ---------------------------------------------------------------------------

    def _row(self, tenant: str | None, wu: str) -> dict[str, Any] | None:
        row = self.state.get(key("u", wu))
        return row if row is not None and _sees(tenant, row["tenant_id"]) else None

    def unit(self, tenant: str | None, wu: str, at: int | None = None
             ) -> dict[str, Any] | None:
        """A unit's state, reason, attempts, node, cost and result address (None: no such
        unit of the tenant, or none yet at `at`)."""
        row = self._row(tenant, wu)
        if row is None:
            return None
        step = Step.from_row(row) if at is None else self._step_at(wu, row, at)
        if step is None:
            return None
        return {**step.as_json(), "tenant_id": row["tenant_id"],
                "session_id": row["session_id"]}

    def _step_at(self, wu: str, row: dict[str, Any], at: int,
                 own: list[Event] | None = None) -> Step | None:
        """The unit's step at `at`; `own`: its own partition's facts, if read already."""
        if row["submitted_at"] > at:
            return None
        if not row["admitted"]:  # refused at admission, then and for good
            return Step.from_row(row)
        step = Step(wu, row["kind"], list(row["depends_on"]), row["submitted_at"])
        for e in own if own is not None else self._facts(wu, "a"):
            # up to the first fact stamped after `at`
            if e.occurred_at > at:
                break
            advance_step(step, e)
        for _, (when, usd) in self.state.items(key("hc", wu, "")):
            if when <= at:
                step.cost_usd += Decimal(usd)
        return step

    def facts(self, wu: str) -> list[Event]:
        """Every fact the log holds about a unit, in logged time's order (those that move it
        in its partition's order)."""
        return sorted(self._facts(wu, ""), key=lambda e: e.occurred_at)

    def _facts(self, wu: str, which: str) -> list[Event]:
        return [self.codec.decode(decode_raw(v))
                for _, v in self.state.items(key("h", wu, which))]

    def submission(self, tenant: str | None, wu: str) -> WorkUnitSubmitted | None:
        """The unit's admitted submission (None: no such unit of the tenant)."""
        row = self._row(tenant, wu)
        if row is None or not row["admitted"]:
            return None
        for e in self._facts(wu, "a"):  # the facts that move it, the submission first
            if isinstance(e, WorkUnitSubmitted):
                return e
        return None

    # -- sessions ----------------------------------------------------------------------

    def _step_ids(self, tenant: str, session: str) -> list[str]:
        return [wu for _, wu in self.state.items(key("su", tenant, session, ""))]

    def session(self, tenant: str | None, owner: str, session: str, at: int | None = None
                ) -> SessionView | None:
        """A session with its steps (None: no such session of the tenant, or none yet)."""
        if not _sees(tenant, owner):
            return None
        row = self.state.get(key("s", owner, session))
        if row is None:
            return None
        if at is None:
            steps = {}
            for wu in self._step_ids(owner, session):
                unit_row = self.state.get(key("u", wu))
                steps[wu] = Step.from_row(unit_row)
            return SessionView(owner, session, steps, row["paused"], row["cancelled_by"],
                               row["started_at"], row["last_at"], dict(row["limits"]),
                               row["at_limit"], list(row["warnings"]), row["cancel_mark"])
        return self._session_at(owner, session, at)

    def _session_at(self, tenant: str, session: str, at: int) -> SessionView | None:
        view = SessionView(tenant, session)
        submissions: list[WorkUnitSubmitted] = []
        for wu in self._step_ids(tenant, session):
            row = self.state.get(key("u", wu))
            own = self._facts(wu, "a")  # decoded once, for its step and the session's
            step = self._step_at(wu, row, at, own)
            if step is None:
                continue
            view.steps[wu] = step
            for e in own:  # the unit's own, up to its cut
                if e.occurred_at > at:
                    break
                if isinstance(e, WorkUnitSubmitted):
                    submissions.append(e)
                else:
                    view.last_at = max(view.last_at, e.occurred_at)
            for e in self._facts(wu, "b"):  # others about it, by their time
                if e.occurred_at <= at and not isinstance(e, ControlApplied):
                    view.last_at = max(view.last_at, e.occurred_at)
        if not view.steps:
            return None
        view.started_at = min(s.submitted_at for s in view.steps.values())
        for e in submissions:
            if e.session_limits is not None and not view.limits:
                view.limits = e.session_limits.model_dump(mode="json", exclude_none=True)
        for _, raw in self.state.items(key("sh", tenant, session, ""),
                                       key("sh", tenant, session, f"{at + 1:015d}")):
            e = self.codec.decode(decode_raw(raw))
            if applies_to(view, e):
                apply_session_fact(view, e)
        return view

    def session_facts(self, tenant: str, session: str) -> list[Event]:
        """Every fact about a session: its units' and its own, in logged time's order."""
        facts = [e for wu in self._step_ids(tenant, session) for e in self.facts(wu)]
        facts += [self.codec.decode(decode_raw(raw))
                  for _, raw in self.state.items(key("sh", tenant, session, ""))]
        return sorted(facts, key=lambda e: e.occurred_at)

    def sessions(self, tenant: str | None = None, state: str | None = None
                 ) -> list[dict[str, Any]]:
        """Every session of the tenant (all, for the operator), oldest first."""
        prefix = key("s", "") if tenant in (None, PLATFORM_TENANT) else key("s", tenant, "")
        out = [session_summary(row) for _, row in self.state.items(prefix)]
        if state is not None:
            out = [s for s in out if s["state"] == state]
        return sorted(out, key=lambda s: (s["started_at"], s["tenant_id"], s["session_id"]))

    def sessions_to_show(self, limit: int) -> tuple[list[SessionView], int]:
        """What the dashboard shows: open sessions first (the most recently active), then
        the most recently started; and how many sessions there are."""
        open_now: list[tuple[str, str]] = []
        for k, _ in self.state.items(key("sopen", "")):
            _, owner, name = k.split(SEP)
            open_now.append((owner, name))
        rows = {(o, n): self.state.get(key("s", o, n)) for o, n in open_now}
        chosen = sorted(open_now, key=lambda k: -rows[k]["last_at"])[:limit]
        if len(chosen) < limit:
            reverse = getattr(self.state, "items_reversed", None)
            recent = (reverse(key("srec", ""), key("srec", "~")) if reverse is not None
                      else reversed(list(self.state.items(key("srec", "")))))
            for k, _ in recent:
                owner, name = k.split(SEP)[2:4]
                if (owner, name) not in chosen:
                    chosen.append((owner, name))
                if len(chosen) >= limit:
                    break
        views = [v for owner, name in chosen
                 if (v := self.session(None, owner, name)) is not None]
        return views, int(self._global().get("sessions", 0))

    # -- people and limits -------------------------------------------------------------------

    def inbox(self, tenant: str | None = None) -> list[dict[str, Any]]:
        """Everything waiting for a person, oldest first."""
        prefix = key("ib", "") if tenant in (None, PLATFORM_TENANT) else key("ib", tenant, "")
        items = [item for _, item in self.state.items(prefix)]
        return sorted(items, key=lambda w: (w["since"], w["work_unit_id"]))

    def control_records(self, control_id: str) -> list[ControlApplied]:
        """The scheduler partitions' records of one control, by partition."""
        found = [ControlApplied.model_validate(v)
                 for _, v in self.state.items(key("ca", control_id, ""))]
        return sorted(found, key=lambda a: a.partition)

    def limits_changed(self, causation_id: str) -> SessionLimitsChanged | None:
        """The limiter's answer to one request for new session limits."""
        found = self.state.get(key("lc", causation_id))
        return None if found is None else SessionLimitsChanged.model_validate(found)

    def session_limits(self, tenant: str, session: str) -> SessionLimits | None:
        row = self.state.get(key("s", tenant, session))
        if row is None or not row["limits"]:
            return None
        return SessionLimits.model_validate(row["limits"])

    def limiter_state(self) -> PrefixedState:
        return PrefixedState(self.state, "lim" + SEP)

    def limits(self, now_ms: int) -> dict[str, Any]:
        """What holds work back right now (as `onceflow limits` shows it)."""
        limiter, state = self.limiter, self.limiter_state()
        limits = limiter.limits
        waiting = Counter(scope for _, scope in limiter.waiting_on(state))
        in_use = limiter.slots_in_use(state)
        scopes = sorted({*limits.per_scope, *in_use})
        slots = [{"scope": s, "in_use": in_use.get(s, 0), "limit": limits.limit_of(s),
                  "waiting": waiting.get(s, 0)} for s in scopes]
        budgets = [{**b.as_json(), "waiting": waiting.get(f"budget:{b.scope}", 0)}
                   for b in limiter.budgets(state)]
        pauses = [v for _, v in self.state.items(key("p", "")) if v["paused_until"] > now_ms]
        breakers = [{"node_id": t.node_id, "breaker": t.breaker, "until": t.breaker_until}
                    for t in self.trust().values() if t.breaker != "closed"]
        return {
            "limits": {"per_kind": limits.per_kind, "per_scope": limits.per_scope,
                       "requests_per_minute": limits.requests_per_minute,
                       "tokens_per_minute": limits.tokens_per_minute},
            "slots": slots, "waiting": sum(waiting.values()),
            "rates": limiter.rate_windows(state, now_ms),
            "budgets": budgets,
            "pauses": [{"scope": p["scope"], "until": p["paused_until"],
                        "provider": p["provider"], "model": p["model"],
                        "remaining_ms": p["paused_until"] - now_ms}
                       for p in sorted(pauses, key=lambda p: p["scope"])],
            "breakers": breakers,
        }

    def held_budgets(self) -> dict[str, Any]:
        """What the limiter holds for running work, by budget scope."""
        return {b.scope: b for b in self.limiter.budgets(self.limiter_state())}

    # -- money -------------------------------------------------------------------------------

    def wallets(self, tenant: str | None = None, at: int | None = None, *,
                tenants_only: bool = False) -> dict[str, Any]:
        """Wallets (tenants' and sessions'), each the sum of its partials; at `at`, the
        partials as they were then. With a tenant, only that tenant's."""
        from onceflow.billing import Wallet, session_wallet_id, tenant_wallet_id

        if tenant in (None, PLATFORM_TENANT):
            prefixes = [key("wp", "tenant:") if tenants_only else key("wp", "")]
        else:
            assert tenant is not None
            prefixes = [key("wp", tenant_wallet_id(tenant), "")]
            if not tenants_only:
                prefixes.append(key("wp", session_wallet_id(tenant, "")))
        partials = [p for prefix in prefixes for p in self._partials(prefix, at)]
        held = self.held_budgets() if at is None else {}
        out = {}
        for wid, w in Wallet.combine(partials).items():
            h = held.get(wid)
            out[wid] = w if h is None else _with_reserved(w, h.reserved)
        return out

    def _partials(self, prefix: str, at: int | None) -> list[WalletUpdated]:
        """The latest partials under `prefix` (at `at`: each as its last update stamped by
        then left it)."""
        found = []
        for k, value in self.state.items(prefix):
            if at is not None:
                partial = k.split(SEP, 1)[1]
                value = _last_below(self.state, key("wh", partial, ""),
                                    key("wh", partial, f"{at + 1:015d}"))
                if value is None:
                    continue
            found.append(WalletUpdated.model_validate(value))
        return found

    def wallet(self, tenant: str, at: int | None = None) -> Any:
        """A tenant's wallet (None before anything was billed to it, or at `at`)."""
        from onceflow.billing import tenant_wallet_id

        return self.wallets(tenant, at, tenants_only=True).get(tenant_wallet_id(tenant))

    def spend(self) -> list[dict[str, Any]]:
        """Billed spend per tenant and model (CPU lines under model "cpu")."""
        out = []
        for k, (usd, tokens, n) in self.state.items(key("sp", "")):
            tenant, model = k.split(SEP)[1:3]
            out.append({"tenant_id": tenant, "model": model, "spend_usd": usd,
                        "tokens": tokens, "line_items": n})
        return out

    # -- the stack -------------------------------------------------------------------------

    def _global(self) -> dict[str, Any]:
        return self.state.get("g/units") or {"by_state": {}, "completed_by_node": {},
                                             "rejected_completions": 0, "sessions": 0}

    def units(self, at: int | None = None) -> dict[str, Any]:
        """Units by state, completed per node, refused completions (at `at`: by state only,
        as the log held them then)."""
        g = self._global()
        if at is None:
            by_state = dict(sorted(g["by_state"].items()))
        else:
            counts: Counter[str] = Counter()
            minute = at // MINUTE_MS
            for _, deltas in self.state.items(key("sb", ""), key("sb", f"{minute:012d}")):
                counts.update(deltas)
            for _, (before, after) in self.state.items(
                    key("sd", ""), key("sd", f"{at + 1:015d}"),
                    key("sd", f"{minute * MINUTE_MS:015d}")):
                if before is not None:
                    counts[before] -= 1
                counts[after] += 1
            by_state = {s: n for s, n in sorted(counts.items()) if n}
        return {"by_state": by_state, "total": sum(by_state.values()),
                "completed_by_node": dict(sorted(g["completed_by_node"].items())),
                "rejected_completions": g["rejected_completions"]}

    def nodes(self) -> dict[str, NodeHeartbeat]:
        return {k.split(SEP, 1)[1]: NodeHeartbeat.model_validate(v)
                for k, v in self.state.items(key("n", ""))}

    def trust(self) -> dict[str, TrustScoreUpdated]:
        return {k.split(SEP, 1)[1]: TrustScoreUpdated.model_validate(v)
                for k, v in self.state.items(key("t", ""))}

    def capacity(self) -> dict[str, Any]:
        found: dict[str, Any] = self.state.get("cap") or capacity_view(None, None)
        return found

    def stack(self, now_ms: int, at: int | None = None) -> dict[str, Any]:
        """What `onceflow status --format json` reports of the running system."""
        from onceflow.infra.observe import node_rows

        return {"units": self.units(at),
                "nodes": node_rows(self.nodes(), now_ms, self.trust()),
                "capacity": self.capacity(), "limits": self.limits(now_ms)}


def _with_reserved(wallet: Any, reserved: Decimal) -> Any:
    import dataclasses

    return dataclasses.replace(wallet, reserved_usd=reserved)
