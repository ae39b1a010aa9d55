"""Starting role processes (scheduler, billing, node agents) in the background.

Each role is `onceflow worker ...` in its own session, logging to
`.onceflow/logs/<name>.log`; it touches a ready file once its partitions
are assigned and recovered (or, for an agent, once its first heartbeat is
out), and `start_roles` returns only when every role is ready.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from onceflow.settings import OnceflowSettings

__all__ = ["AgentSpec", "RoleProcess", "RoleStartError", "agent_specs", "start_roles",
           "stop_roles", "worker_command"]

DEFAULT_REGIONS = ("eu-west", "us-east", "ap-south")


class RoleStartError(RuntimeError):
    pass


@dataclass(frozen=True)
class AgentSpec:
    node_id: str
    region: str | None = None
    kinds: tuple[str, ...] = ("cpu", "llm_pod", "tool")
    concurrency: int = 4
    llm_provider: str | None = None


@dataclass
class RoleProcess:
    name: str
    process: subprocess.Popen[bytes]
    ready_file: Path
    log_file: Path

    @property
    def pid(self) -> int:
        return self.process.pid


def agent_specs(count: int, *, concurrency: int = 4, kinds: tuple[str, ...] = ("cpu", "llm_pod",
                "tool"), region: str | None = None, llm_provider: str | None = None,
                ) -> list[AgentSpec]:
    """`n1..nN`, spread over a few regions unless one is given."""
    return [
        AgentSpec(f"n{i}", region or DEFAULT_REGIONS[(i - 1) % len(DEFAULT_REGIONS)], kinds,
                  concurrency, llm_provider)
        for i in range(1, count + 1)
    ]


def worker_command(role: str, *args: str) -> list[str]:
    return [sys.executable, "-m", "onceflow.infra.cli", "worker", role, *args]


def _spawn(settings: OnceflowSettings, name: str, cmd: list[str]) -> RoleProcess:
    run_dir = settings.stack_dir
    (run_dir / "logs").mkdir(parents=True, exist_ok=True)
    (run_dir / "ready").mkdir(parents=True, exist_ok=True)
    ready = run_dir / "ready" / name
    ready.unlink(missing_ok=True)
    log = run_dir / "logs" / f"{name}.log"
    env = {**os.environ, **settings.to_env(), "ONCEFLOW_LOG_FORMAT": "json"}
    with open(log, "ab") as out:
        proc = subprocess.Popen([*cmd, "--ready-file", str(ready)], stdout=out,
                                stderr=subprocess.STDOUT, env=env, start_new_session=True)
    return RoleProcess(name, proc, ready, log)


def start_roles(
    settings: OnceflowSettings,
    agents: list[AgentSpec],
    *,
    scheduler: bool | int = True,
    billing: bool = False,
    trust: bool = False,
    autoscaler: bool | list[str] = False,
    fleet: list[str] | None = None,
    views_port: int | None = None,
    timeout_s: float = 90.0,
) -> list[RoleProcess]:
    """Start the scheduler (`scheduler` replicas of it), billing, trust, the autoscaler, the
    fleet manager, the views (HTTP on `views_port`) and the agents; return once all are
    ready.

    Scheduler replicas share its consumer group, so the work-unit partitions
    are split between them (each partition keeps a single writer).
    """
    roles: list[RoleProcess] = []
    for i in range(int(scheduler)):
        name = "scheduler" if i == 0 else f"scheduler-{i + 1}"
        roles.append(_spawn(settings, name, worker_command("scheduler")))
    if billing:
        roles.append(_spawn(settings, "billing", worker_command("billing")))
    if trust:
        roles.append(_spawn(settings, "trust", worker_command("trust")))
    if autoscaler:  # True, or the autoscaler's extra options
        extra = autoscaler if isinstance(autoscaler, list) else []
        roles.append(_spawn(settings, "autoscaler", worker_command("autoscaler", *extra)))
    if fleet is not None:  # the fleet manager's options for the agents it starts
        roles.append(_spawn(settings, "fleet", worker_command("fleet", *fleet)))
    if views_port is not None:
        roles.append(_spawn(settings, "views", worker_command("views", "--port",
                                                              str(views_port))))
    for spec in agents:
        args = ["--node-id", spec.node_id, "--kinds", ",".join(spec.kinds),
                "--concurrency", str(spec.concurrency)]
        if spec.region:
            args += ["--region", spec.region]
        if spec.llm_provider:
            args += ["--llm-provider", spec.llm_provider]
        roles.append(_spawn(settings, f"agent-{spec.node_id}", worker_command("agent", *args)))
    try:
        _wait_ready(roles, timeout_s)
    except RoleStartError:
        stop_roles(roles)  # nothing half-started is left behind
        raise
    return roles


def _wait_ready(roles: list[RoleProcess], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    for role in roles:
        while not role.ready_file.exists():
            if role.process.poll() is not None:
                tail = role.log_file.read_text(errors="replace")[-2000:]
                raise RoleStartError(f"{role.name} exited with {role.process.returncode}:\n{tail}")
            if time.monotonic() > deadline:
                raise RoleStartError(f"{role.name} was not ready after {timeout_s}s "
                                     f"(see {role.log_file})")
            time.sleep(0.05)


def stop_roles(roles: list[RoleProcess], timeout_s: float = 20.0) -> None:
    """SIGTERM every role, wait for them, SIGKILL whoever is still there."""
    for role in roles:
        if role.process.poll() is None:
            role.process.terminate()
    for role in roles:
        try:
            role.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            role.process.kill()
            role.process.wait(timeout=5)
