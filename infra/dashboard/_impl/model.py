"""What the dashboard shows, as one JSON snapshot: the units, nodes, capacity and limits
exactly as `onceflow status --format json` reports them (one function makes both), plus
sessions with their DAGs, wallets, spend per tenant and model, and the inbox: all read
from the read model, so a snapshot costs the same however long the log.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from typing import Any

import structlog

from onceflow.infra.readmodel import ReadModelFeed, ReadModelReader
from onceflow.infra.sessions import SESSION_ENDED
from onceflow.settings import OnceflowSettings

__all__ = ["Dashboard"]

log = structlog.get_logger("onceflow.dashboard")

#: sessions a snapshot carries, open ones first, then the most recently active
SESSIONS_SHOWN = 50


class Dashboard:
    """The snapshots behind the page; `start` it, ask it for `snapshot()`, `close` it.

    Read from the read model (`feed`): a new snapshot is made when the model has
    folded something new (at most once per `interval_s`) while someone looks (a
    snapshot was asked for in the last `idle_s`); nothing is refolded.
    """

    def __init__(self, settings: OnceflowSettings, feed: ReadModelFeed, *,
                 interval_s: float = 1.0, history: int = 600, idle_s: float = 30.0) -> None:
        self.settings = settings
        self.feed = feed
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
        version = 0
        folded = -1
        while not self._stop.is_set():
            began = time.monotonic()
            now_ms = int(time.time() * 1000)
            with self._lock:
                watched = time.monotonic() - self._wanted_at < self.idle_s
            changed = self.feed.version != folded
            if changed or self._latest is None:
                folded = self.feed.version
                reader = self.feed.reader()
                with self._lock:
                    self._history.append({"at": now_ms,
                                          "by_state": reader.units()["by_state"]})
                if watched or self._latest is None:
                    try:
                        snap = self._compute(reader, now_ms)
                    except Exception as exc:  # a read failed: try at the next change
                        log.warning("dashboard.refresh_failed", error=str(exc))
                    else:
                        version += 1
                        with self._fresh:
                            snap["version"] = version
                            snap["history"] = list(self._history)
                            self._latest = snap
                            self._fresh.notify_all()
            # the next change, but no sooner than a period after this one
            self._stop.wait(max(0.0, self.interval_s - (time.monotonic() - began)))
            self.feed.wait_version(folded, self.interval_s)

    def _compute(self, reader: ReadModelReader, now_ms: int) -> dict[str, Any]:
        views, total = reader.sessions_to_show(SESSIONS_SHOWN)
        # Open sessions first (they are what an operator acts on), then the latest.
        views.sort(key=lambda v: (v.state in SESSION_ENDED, -v.last_at, v.tenant_id,
                                  v.session_id))
        sessions = [{**v.as_json(), "dag": [s.as_json() for s in v.steps.values()]}
                    for v in views]
        # Tenant wallets: a session's wallet is its cost, shown with the session.
        wallets = [w.as_json() for _, w in sorted(reader.wallets(tenants_only=True).items())]
        return {"at": now_ms, **reader.stack(now_ms), "sessions": sessions,
                "sessions_total": total, "wallets": wallets, "spend": reader.spend(),
                "inbox": reader.inbox(), "read_model": self.feed.status()}
