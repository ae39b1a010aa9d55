"""The local stack: the embedded Kafka broker, the topics, and the processes `up` starts.

State lives in `.onceflow/stack.json` so that `status` and `down` (and every
command that needs the broker's address) find what `up` started. The broker's
data lives in `.onceflow/kafka/` and the roles' local state in
`.onceflow/state/`: both are kept across `down` / `up`, and `up --fresh`
(or `onceflow reset`) removes them together.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from onceflow.infra.broker import EmbeddedKafka, pid_alive, stop_pid
from onceflow.settings import OnceflowSettings
from onceflow.streams.topics.provisioning import TopicStatus, create_topics

__all__ = [
    "StackState",
    "broker_for",
    "local_settings",
    "pid_alive",
    "read_stack",
    "reset_stack",
    "stack_down",
    "stack_up",
    "start_stack_roles",
    "write_stack",
]


@dataclass
class StackState:
    bootstrap: str
    broker_pid: int
    started_at: float
    processes: dict[str, int] = field(default_factory=dict)
    views_url: str | None = None
    broker_data: str | None = None

    def to_json(self) -> str:
        return json.dumps(self.__dict__, indent=2)


def read_stack(settings: OnceflowSettings) -> StackState | None:
    path = settings.stack_file()
    if not path.exists():
        return None
    try:
        data: dict[str, Any] = json.loads(path.read_text())
        return StackState(**data)
    except (ValueError, TypeError):
        return None


def write_stack(settings: OnceflowSettings, state: StackState) -> None:
    path = settings.stack_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(state.to_json())
    os.replace(tmp, path)


def broker_for(settings: OnceflowSettings) -> EmbeddedKafka:
    """The stack's embedded broker (not started): its data under the stack directory."""
    return EmbeddedKafka(data_dir=settings.stack_dir / "kafka",
                         log_path=settings.stack_dir / "broker.log",
                         heap_mb=settings.embedded_kafka_heap_mb)


def reset_stack(settings: OnceflowSettings) -> list[Path]:
    """Remove the broker's data and the roles' local state; return what was removed.

    The two go together: local state remembers offsets in a log, and a new
    log would make it describe records that do not exist. A state directory
    configured outside the stack directory is left alone (it may be shared).
    The stack must be down.
    """
    import shutil

    removed: list[Path] = []
    stack_dir = settings.stack_dir.resolve()
    for path in (settings.stack_dir / "kafka", local_settings(settings).state_dir):
        resolved = path.resolve()
        if resolved.is_relative_to(stack_dir) and resolved.exists():
            shutil.rmtree(resolved, ignore_errors=True)
            removed.append(path)
    return removed


def stack_up(settings: OnceflowSettings) -> tuple[StackState, list[TopicStatus], bool]:
    """Start the broker (unless it is already up) and create the topics that are missing.

    Returns the stack, the topic statuses and whether the broker was started now.
    """
    existing = read_stack(settings)
    if existing is not None and pid_alive(existing.broker_pid):
        settings = settings.model_copy(update={"bootstrap_servers": existing.bootstrap})
        return existing, create_topics(settings), False
    settings.stack_dir.mkdir(parents=True, exist_ok=True)
    broker = broker_for(settings).start(detach=True)
    assert broker.process is not None
    state = StackState(broker.bootstrap, broker.process.pid, time.time(),
                       broker_data=str(broker.data_dir))
    write_stack(settings, state)
    settings = settings.model_copy(update={"bootstrap_servers": broker.bootstrap})
    return state, create_topics(settings), True


def stack_down(settings: OnceflowSettings) -> list[str]:
    """Stop every process `up` started, then the broker; return what was stopped.

    The roles get SIGTERM and finish their checkpoint before the broker goes;
    the broker gets SIGTERM and is waited for (a clean shutdown flushes its
    logs and tells the controller it left, so the next `up` is quick).
    """
    state = read_stack(settings)
    stopped: list[str] = []
    if state is None:
        return stopped
    # The fleet first, so that it starts no agent while the others stop.
    for name, pid in sorted(state.processes.items(), key=lambda kv: (kv[0] != "fleet", kv[0])):
        if stop_pid(pid):
            stopped.append(f"{name} (pid {pid})")
    if stop_pid(state.broker_pid, timeout=60):
        stopped.append(f"broker (pid {state.broker_pid})")
    settings.stack_file().unlink(missing_ok=True)
    return stopped


def local_settings(settings: OnceflowSettings) -> OnceflowSettings:
    """The stack's broker, with state and content under the stack directory by default."""
    update: dict[str, Any] = {}
    state = read_stack(settings)
    if state is not None:
        update["bootstrap_servers"] = state.bootstrap
    defaults = OnceflowSettings.model_fields
    if settings.state_dir == defaults["state_dir"].default:
        update["state_dir"] = Path(settings.stack_dir) / "state"
    if settings.content_store_url == defaults["content_store_url"].default:
        update["content_store_url"] = f"file://{Path(settings.stack_dir).resolve() / 'content'}"
    if settings.metrics_port is None:
        update["metrics_port"] = 0  # each role serves /metrics on a port of its own
    return settings.model_copy(update=update)


def metrics_urls(settings: OnceflowSettings) -> dict[str, str]:
    """Each running role's /metrics, as the role wrote it beside its ready file."""
    ready = Path(settings.stack_dir) / "ready"
    return {p.name.removesuffix(".metrics"): p.read_text().strip()
            for p in sorted(ready.glob("*.metrics"))} if ready.is_dir() else {}


def start_stack_roles(
    settings: OnceflowSettings,
    *,
    agents: int,
    scheduler: bool = True,
    billing: bool = True,
    trust: bool = True,
    views: bool = True,
    autoscale: bool = True,
    concurrency: int = 4,
    region: str | None = None,
    llm_provider: str | None = None,
    members: dict[str, int] | None = None,
) -> dict[str, int]:
    """Start the roles that are not running yet (`members` of each: else the `members`
    setting, else one); record them for `status` and `down`."""
    from onceflow.infra.roles import AgentSpec, agent_specs, member_names, start_roles

    state = read_stack(settings)
    if state is None:
        raise RuntimeError("the stack is not up")
    settings = local_settings(settings)
    running = {n: p for n, p in state.processes.items() if pid_alive(p)}
    specs: list[AgentSpec] = [
        s for s in agent_specs(agents, concurrency=concurrency, region=region,
                               llm_provider=llm_provider)
        if f"agent-{s.node_id}" not in running
    ]
    counts = {**settings.members, **(members or {})}
    missing = [name for role, on in (("scheduler", scheduler), ("billing", billing),
                                     ("trust", trust), ("limiter", "limiter" in counts),
                                     ("views", views)) if on
               for name in member_names(role, counts.get(role, 1)) if name not in running]
    views_port = None
    if any(n == "views" or n.startswith("views-") for n in missing):
        from onceflow.infra.broker import free_port

        views_port = free_port()
    fleet = None
    if autoscale and "fleet" not in running:
        fleet = ["--concurrency", str(concurrency)]
        fleet += ["--region", region] if region else []
        fleet += ["--llm-provider", llm_provider] if llm_provider else []
    started = start_roles(settings, specs, scheduler=scheduler, billing=billing,
                          trust=trust, autoscaler=autoscale and "autoscaler" not in running,
                          fleet=fleet, views_port=views_port if views else None,
                          members=counts, names=missing)
    running.update({r.name: r.pid for r in started})
    state.processes = running
    if views_port is not None and "views" in missing:
        state.views_url = f"http://127.0.0.1:{views_port}"
    write_stack(settings, state)
    return running
