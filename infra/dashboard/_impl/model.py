"""What the dashboard shows, as one JSON snapshot: the units, nodes, capacity and limits
exactly as `onceflow status --format json` reports them (one function makes both), plus
sessions with their DAGs, wallets, spend per tenant and model, and the inbox.

A thread keeps a follower on the work-unit topic, so units by state over time cost one
incremental read per tick. The rest folds whole topics, as the CLI does, so it is only
recomputed while someone is looking (a snapshot was asked for in the last `idle_s`).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Iterable
from decimal import Decimal
from typing import Any

import structlog

from onceflow.schemas import LedgerLineItem
from onceflow.settings import OnceflowSettings

__all__ = ["Dashboard", "spend_by_tenant_and_model"]

log = structlog.get_logger("onceflow.dashboard")

#: sessions a snapshot carries, open ones first, then the most recently active
SESSIONS_SHOWN = 50


def spend_by_tenant_and_model(items: Iterable[LedgerLineItem]) -> list[dict[str, Any]]:
    """Billed spend per tenant and model (CPU lines under model "cpu"), sorted by both."""
    totals: dict[tuple[str, str], list[Any]] = {}
    for item in items:
        if not item.billed:
            continue
        key = (item.tenant_id, item.model or "cpu")
        row = totals.setdefault(key, [Decimal("0"), 0, 0])
        row[0] += item.total_usd
        row[1] += item.llm_tokens
        row[2] += 1
    return [{"tenant_id": t, "model": m, "spend_usd": f"{usd:f}", "tokens": tokens,
             "line_items": n}
            for (t, m), (usd, tokens, n) in sorted(totals.items())]


class Dashboard:
    """The snapshots behind the page; `start` it, ask it for `snapshot()`, `close` it."""

    def __init__(self, settings: OnceflowSettings, *, interval_s: float = 1.0,
                 history: int = 600, idle_s: float = 30.0) -> None:
        self.settings = settings
        self.interval_s = interval_s
        self.idle_s = idle_s
        self._history: deque[dict[str, Any]] = deque(maxlen=history)
        self._lock = threading.Lock()
        self._latest: dict[str, Any] | None = None
        self._fresh = threading.Condition(self._lock)
        self._wanted_at = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="dashboard", daemon=True)

    def start(self) -> Dashboard:
        self._thread.start()
        return self

    def close(self) -> None:
        self._stop.set()
        self._thread.join(10)

    def snapshot(self, *, newer_than: int = -1, timeout: float = 30.0) -> dict[str, Any]:
        """The latest snapshot whose `version` is above `newer_than` (waits for one)."""
        deadline = time.monotonic() + timeout
        with self._fresh:
            self._wanted_at = time.monotonic()
            while self._latest is None or self._latest["version"] <= newer_than:
                left = deadline - time.monotonic()
                if left <= 0 or not self._thread.is_alive():
                    break
                self._fresh.wait(left)
            if self._latest is None:
                raise TimeoutError("the dashboard has not read the log yet")
            return self._latest

    def _run(self) -> None:
        from onceflow.infra.observe import ProgressFollower
        from onceflow.streams.scheduler import PROGRESS_EVENT_TYPES

        # Only the facts that move a unit's state are decoded: the others (claims, queue
        # samples, slots, dependencies) are most of the topic and change no count here.
        follower = ProgressFollower(self.settings, only=PROGRESS_EVENT_TYPES)
        version = 0
        try:
            while not self._stop.is_set():
                began = time.monotonic()
                follower.catch_up()
                now_ms = int(time.time() * 1000)
                by_state = follower.progress.by_state()
                with self._lock:
                    self._history.append({"at": now_ms, "by_state": by_state})
                    watched = time.monotonic() - self._wanted_at < self.idle_s
                if watched or self._latest is None:
                    try:
                        snap = self._compute(follower, now_ms)
                    except Exception as exc:  # a read failed (broker away): try next tick
                        log.warning("dashboard.refresh_failed", error=str(exc))
                    else:
                        version += 1
                        with self._fresh:
                            snap["version"] = version
                            snap["history"] = list(self._history)
                            self._latest = snap
                            self._fresh.notify_all()
                self._stop.wait(max(0.0, self.interval_s - (time.monotonic() - began)))
        finally:
            follower.close()

    def _compute(self, follower: Any, now_ms: int) -> dict[str, Any]:
        from onceflow.billing import read_wallets
        from onceflow.infra.observe import stack_report
        from onceflow.infra.sessions import SESSION_ENDED, fold_sessions, read_log
        from onceflow.infra.steering import read_inbox

        report = stack_report(self.settings, now_ms, follower.progress)
        facts, items = read_log(self.settings)
        # Open sessions first (they are what an operator acts on), then the latest.
        views = sorted(fold_sessions(facts, items).values(),
                       key=lambda v: (v.state in SESSION_ENDED, -v.last_at, v.tenant_id,
                                      v.session_id))
        sessions = [{**v.as_json(), "dag": [s.as_json() for s in v.steps.values()]}
                    for v in views[:SESSIONS_SHOWN]]
        # Tenant wallets: a session's wallet is its cost, shown with the session.
        wallets = [w.as_json() for _, w in sorted(read_wallets(self.settings).items())
                   if not w.execution_session_id]
        return {"at": now_ms, **report, "sessions": sessions,
                "sessions_total": len(views), "wallets": wallets,
                "spend": spend_by_tenant_and_model(items),
                "inbox": read_inbox(self.settings)}
