"""The local fleet manager: node-agent processes that follow the autoscaler's scale requests.

It reads `capacity.scale.requested` from the capacity topic and makes the
number of node agents in the local stack equal to the latest request's
`new_replicas`: it starts agents `n<k>` (the lowest free numbers) and drains
the highest-numbered ones (SIGUSR1: the agent heartbeats `draining`, claims
nothing new, finishes what it claimed, then exits). Every agent it starts or
retires is recorded in `.onceflow/stack.json`, so `status` and `down` see it.
"""

from __future__ import annotations

import os
import re
import signal
import threading
import time
from dataclasses import dataclass, field

from onceflow.infra.roles import AgentSpec, RoleStartError, start_roles
from onceflow.infra.stack import pid_alive, read_stack, write_stack
from onceflow.schemas import CapacityScaleRequested, CodecError, SingleObjectCodec
from onceflow.settings import OnceflowSettings
from onceflow.streams.kafka import TopicFollower, type_fingerprints
from onceflow.streams.log import get_logger
from onceflow.streams.topics.catalog import TopicCatalog

__all__ = ["FleetManager"]

_AGENT = re.compile(r"^agent-n(\d+)$")


@dataclass
class FleetManager:
    settings: OnceflowSettings
    concurrency: int = 4
    kinds: tuple[str, ...] = ("cpu", "llm_pod", "tool")
    region: str | None = None
    llm_provider: str | None = None
    draining: dict[str, int] = field(default_factory=dict)
    target: int | None = None

    def __post_init__(self) -> None:
        self.log = get_logger(role="fleet")
        self._lock = threading.Lock()

    def agents(self) -> dict[int, int]:
        """Running agents of the local stack: number -> pid (draining ones included)."""
        stack = read_stack(self.settings)
        out: dict[int, int] = {}
        for name, pid in (stack.processes if stack else {}).items():
            m = _AGENT.match(name)
            if m and pid_alive(pid):
                out[int(m.group(1))] = pid
        return out

    def _record(self, add: dict[str, int] | None = None, remove: set[str] | None = None) -> None:
        with self._lock:
            stack = read_stack(self.settings)
            if stack is None:
                return
            stack.processes = {n: p for n, p in stack.processes.items()
                               if n not in (remove or set())}
            stack.processes.update(add or {})
            write_stack(self.settings, stack)

    def apply(self, target: int) -> None:
        """Start or drain agents until the active ones (not draining) number `target`."""
        self.reap()
        running = self.agents()
        active = sorted(n for n, pid in running.items() if f"agent-n{n}" not in self.draining)
        if len(active) < target:
            free = [n for n in range(1, target + len(running) + 1) if n not in running]
            specs = [AgentSpec(f"n{n}", self.region, self.kinds, self.concurrency,
                               self.llm_provider) for n in free[:target - len(active)]]
            try:
                started = start_roles(self.settings, specs, scheduler=False)
            except RoleStartError as exc:
                self.log.error("fleet.start_failed", error=str(exc)[:300])
                return
            self._record(add={r.name: r.pid for r in started})
            self.log.info("fleet.scaled_up", started=[r.name for r in started], target=target)
        for n in sorted(active, reverse=True)[:max(0, len(active) - target)]:
            name = f"agent-n{n}"
            os.kill(running[n], signal.SIGUSR1)
            self.draining[name] = running[n]
            self.log.info("fleet.draining", agent=name, target=target)

    def reap(self) -> list[str]:
        """Forget drained agents that have exited."""
        gone = [n for n, pid in self.draining.items() if not pid_alive(pid)]
        for name in gone:
            self.draining.pop(name, None)
        if gone:
            self._record(remove=set(gone))
            self.log.info("fleet.drained", agents=gone)
        return gone

    def run(self, stop: threading.Event) -> None:
        """Follow the capacity topic: each scale request sets the target."""
        follower = TopicFollower(self.settings, [TopicCatalog(self.settings)["capacity"].name])
        codec = SingleObjectCodec()
        wanted = type_fingerprints(codec, frozenset({"capacity.scale.requested"}))
        # Requests from before this stack started are an earlier run's: `up` starts this
        # run's agents itself, and acting on an old target would start a second agent
        # under an id `up` is about to use, which `up` then records over (and `down` never
        # stops). Requests since are this run's, and the latest is followed: a manager
        # restarted (killed, say) catches up with what was asked while it was away.
        stack = read_stack(self.settings)
        started_ms = int((stack.started_at if stack else time.time()) * 1000)
        self.log.info("fleet.started", agents=sorted(self.agents()))
        try:
            while not stop.is_set():
                latest = None
                for msg in follower.read(timeout=0.5, max_records=500):
                    raw = msg.value() or b""
                    if wanted is not None and raw[2:10] not in wanted:
                        continue
                    try:
                        event = codec.decode(raw)
                    except CodecError:
                        continue
                    if (isinstance(event, CapacityScaleRequested)
                            and event.occurred_at >= started_ms):
                        latest = event
                if latest is not None and latest.new_replicas != self.target:
                    self.target = latest.new_replicas
                    self.log.info("fleet.target", replicas=self.target, reason=latest.reason)
                    self.apply(self.target)
                else:
                    self.reap()
        finally:
            follower.close()
