"""An execution cluster for tests: the scheduler and node agents against the session broker.

In-process (threads) for speed where nothing is killed; the chaos tests use
`infra.roles` to run the same roles as processes they can SIGKILL.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from onceflow.agents import NodeAgent
from onceflow.billing import cost_estimator
from onceflow.infra.observe import ProgressFollower
from onceflow.schemas import SingleObjectCodec, WorkUnitSubmitted
from onceflow.settings import AgentSettings, OnceflowSettings, SchedulerSettings
from onceflow.streams.kafka import EventProducer
from onceflow.streams.limits.worker import build_limiter
from onceflow.streams.runtime import BatchedProcessor
from onceflow.streams.scheduler.worker import build_scheduler
from onceflow.streams.topics import TopicCatalog, create_topics
from tests.fixtures import wait_for

T_START = int(time.time() * 1000)


def fast_settings(settings: OnceflowSettings) -> OnceflowSettings:
    """Short leases, deadlines and heartbeats, so recovery happens within a test."""
    return settings.model_copy(update={
        "scheduler": SchedulerSettings(claim_timeout_ms=3000, tick_interval_ms=100,
                                       node_expiry_ms=4000, retry_base_ms=100),
        "agent": AgentSettings(heartbeat_interval_ms=300),
        "batch_timeout_ms": 20,
    })


def unit(wu: str, **fields: Any) -> WorkUnitSubmitted:
    fields.setdefault("lease_ms", 3000)
    return WorkUnitSubmitted(event_id=f"sub-{wu}-{fields.get('simulated_ms', 0)}",
                             occurred_at=int(time.time() * 1000), tenant_id="acme",
                             execution_session_id="s1", work_unit_id=wu, **fields)


def effect_rows(db: Path) -> Counter[str]:
    """Rows the `effects.append` tool wrote, per work unit: the outside world's count."""
    if not db.exists():
        return Counter()
    conn = sqlite3.connect(db)
    try:
        return Counter(r[0] for r in conn.execute("SELECT work_unit_id FROM effects"))
    finally:
        conn.close()


@dataclass
class Cluster:
    settings: OnceflowSettings
    threads: list[threading.Thread] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    agents: list[NodeAgent] = field(default_factory=list)
    scheduler: BatchedProcessor | None = None

    def __post_init__(self) -> None:
        create_topics(self.settings)
        self.catalog = TopicCatalog(self.settings)
        self.producer = EventProducer(self.settings, SingleObjectCodec())
        self.follower: ProgressFollower | None = None
        self._reader: tuple[Any, Any, threading.Thread, str] | None = None

    def cli_env(self) -> dict[str, str]:
        """The environment a CLI command of this cluster runs in: its settings, and the read
        model every read asks (the views service's `/v1`, started with the first)."""
        import os

        if self._reader is None:
            self._reader = start_reader(self.settings)
        return {**os.environ, **self.settings.to_env(), "ONCEFLOW_VIEWS_URL": self._reader[3]}

    def start_scheduler(self) -> None:
        ready = threading.Event()
        self.scheduler = build_scheduler(self.settings, on_ready=ready.set,
                                         estimator=cost_estimator(self.settings.billing))
        self._spawn(lambda: self.scheduler.run(self.stop))  # type: ignore[union-attr]
        limiter = build_limiter(self.settings)  # beside every scheduler: retry budgets
        self._spawn(lambda: limiter.run(self.stop))
        assert ready.wait(60), "scheduler never became ready"

    def start_agent(self, node_id: str, **kw: Any) -> NodeAgent:
        ready = threading.Event()
        kw.setdefault("kinds", ("cpu", "llm_pod", "tool"))
        agent = NodeAgent(self.settings, node_id=node_id, on_ready=ready.set, **kw)
        self.agents.append(agent)
        self._spawn(lambda: agent.run(self.stop))
        assert ready.wait(30), f"agent {node_id} never became ready"
        if self.scheduler is not None:
            # Placement sees a node once its heartbeat reached the scheduler's view.
            view = self.scheduler.reducer.view  # type: ignore[attr-defined]
            wait_for(lambda: node_id in view.nodes, timeout=30,
                     what=f"the scheduler to see {node_id}'s heartbeat")
        return agent

    def start_billing(self) -> list[BatchedProcessor]:
        """The ledger, wallets and anomaly checker, as `onceflow worker billing` runs them."""
        from onceflow.billing.worker import build_billing

        ready = threading.Event()
        processors = build_billing(self.settings, on_ready=ready.set)
        for p in processors:
            self._spawn(lambda p=p: p.run(self.stop))  # type: ignore[misc]
        assert ready.wait(60), "billing never became ready"
        return processors

    def _spawn(self, target: Any) -> None:
        t = threading.Thread(target=target, daemon=True)
        t.start()
        self.threads.append(t)

    def submit(self, *units: WorkUnitSubmitted) -> None:
        topic = self.catalog["submissions"]
        for u in units:
            self.producer.send(topic, u)
        self.producer.flush()

    def progress(self) -> ProgressFollower:
        if self.follower is None:
            self.follower = ProgressFollower(self.settings)
        self.follower.poll(timeout=0.2)
        return self.follower

    def wait_settled(self, ids: list[str], timeout: float = 60.0) -> dict[str, str]:
        from onceflow.streams.scheduler import SETTLED_STATES

        def done() -> bool:
            status = self.progress().progress.status
            return all(status.get(i) in SETTLED_STATES for i in ids)

        wait_for(done, timeout=timeout, what=f"{len(ids)} units to settle")
        status = self.progress().progress.status
        return {i: status[i] for i in ids}

    def close(self) -> None:
        if not hasattr(self, "producer"):
            return  # closed already
        self.stop.set()
        for t in self.threads:
            t.join(timeout=20)
        if self.follower is not None:
            self.follower.close()
            self.follower = None
        if self._reader is not None:
            stop_reader(self._reader)
            self._reader = None
        # Drop the clients now, not at garbage collection after the broker is gone.
        import gc

        self.agents.clear()
        self.scheduler = None
        del self.producer
        gc.collect()


def start_reader(settings: OnceflowSettings) -> tuple[Any, Any, threading.Thread, str]:
    """The read model and the HTTP API over it, in this process (as `onceflow worker views`
    serves them): (its feed, its server, the server's thread, its URL), once caught up."""
    import uvicorn

    from onceflow.infra.api import create_api
    from onceflow.infra.broker import free_port
    from onceflow.infra.readmodel import ReadModelFeed

    feed = ReadModelFeed(settings).start()
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_api(settings, feed=feed), host="127.0.0.1",
                                           port=port, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_for(lambda: server.started and feed.caught_up.is_set(), timeout=60,
             what="the read model to catch up and its API to listen")
    return feed, server, thread, f"http://127.0.0.1:{port}"


def stop_reader(reader: tuple[Any, Any, threading.Thread, str]) -> None:
    feed, server, thread, _ = reader
    server.should_exit = True
    thread.join(10)
    feed.close()


class ChatServer:
    """A tiny server that speaks the chat-completions API, counting tokens by words.

    It can refuse like a rate-limited provider: with `fail_with` every request, or
    with `refuse_for_s` every request during that long after the first one, each
    time with `fail_headers` (`Retry-After`, say). It records each request's
    arrival and how many were in flight at once.
    """

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.fail_with: int | None = None
        self.fail_headers: dict[str, str] = {}
        self.refuse_for_s: float | None = None
        self.answer_delay_s = 0.0
        # set: each answer waits until the test releases it (the provider thinking for as
        # long as the test needs, instead of for a guessed number of seconds)
        self.hold: threading.Event | None = None
        self.first_at: float | None = None
        self.in_flight = 0
        self.max_in_flight = 0
        self.refused_at: list[float] = []
        self.answered_at: list[float] = []
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                now = time.monotonic()
                with server._lock:
                    server.requests.append({"path": self.path, "body": body,
                                            "auth": self.headers.get("Authorization"),
                                            "at": now})
                    server.first_at = server.first_at if server.first_at is not None else now
                    refusing = server.fail_with is not None or (
                        server.refuse_for_s is not None
                        and now - server.first_at < server.refuse_for_s)
                    server.in_flight += 1
                    server.max_in_flight = max(server.max_in_flight, server.in_flight)
                try:
                    if refusing:
                        with server._lock:
                            server.refused_at.append(now)
                        self._reply(server.fail_with or 429,
                                    {"error": {"message": "slow down", "type": "x"}},
                                    server.fail_headers)
                        return
                    if server.answer_delay_s:
                        time.sleep(server.answer_delay_s)  # the provider thinking
                    if server.hold is not None:
                        server.hold.wait(60)
                    prompt = body["messages"][-1]["content"]
                    answer = "echo: " + prompt
                    with server._lock:
                        server.answered_at.append(time.monotonic())
                    self._reply(200, {
                        "id": "chatcmpl-1", "object": "chat.completion", "created": 1,
                        "model": body["model"],
                        "choices": [{"index": 0, "finish_reason": "stop",
                                     "message": {"role": "assistant", "content": answer}}],
                        "usage": {"prompt_tokens": len(prompt.split()),
                                  "completion_tokens": len(answer.split()),
                                  "total_tokens": len(prompt.split()) + len(answer.split())},
                    })
                finally:
                    with server._lock:
                        server.in_flight -= 1

            def _reply(self, code: int, payload: dict[str, Any],
                       headers: dict[str, str] | None = None) -> None:
                data = json.dumps(payload).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
