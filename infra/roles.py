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

__all__ = ["MEMBER_ROLES", "AgentSpec", "RoleProcess", "RoleStartError", "agent_specs",
           "member_names", "parse_members", "start_roles", "stop_roles", "worker_command"]

#: the roles that run as several members of one consumer group (`--members`)
MEMBER_ROLES = ("scheduler", "billing", "trust", "limiter", "views")

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


def member_names(role: str, count: int) -> list[str]:
    """`scheduler`, `scheduler-2`, ...: stable names, so a member restarted under its name
    fences its last incarnation and finds its own state directory again."""
    return [role if i == 1 else f"{role}-{i}" for i in range(1, count + 1)]


def parse_members(text: str) -> dict[str, int]:
    """`scheduler=3,billing=2` as {role: members}; a ValueError says what is wrong."""
    out: dict[str, int] = {}
    for part in (p.strip() for p in text.split(",") if p.strip()):
        role, sep, count = part.partition("=")
        role = role.strip()
        if not sep or role not in MEMBER_ROLES:
            raise ValueError(f"{part!r}: write ROLE=N with ROLE one of {', '.join(MEMBER_ROLES)}")
        try:
            n = int(count)
        except ValueError:
            raise ValueError(f"{part!r}: {count.strip()!r} is not a number of members") from None
        if not 1 <= n <= 16:
            raise ValueError(f"{part!r}: members must be between 1 and 16")
        out[role] = n
    return out


def worker_command(role: str, *args: str) -> list[str]:
    return [sys.executable, "-m", "onceflow.infra.cli", "worker", role, *args]


def _spawn(settings: OnceflowSettings, name: str, cmd: list[str]) -> RoleProcess:
    run_dir = settings.stack_dir
    (run_dir / "logs").mkdir(parents=True, exist_ok=True)
    (run_dir / "ready").mkdir(parents=True, exist_ok=True)
    ready = run_dir / "ready" / name
    ready.unlink(missing_ok=True)
    log = run_dir / "logs" / f"{name}.log"
    # Each process is a member under its own name: its transactional ids, client id and
    # state directory.
    env = {**os.environ, **settings.to_env(), "ONCEFLOW_LOG_FORMAT": "json",
           "ONCEFLOW_MEMBER": name}
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
    members: dict[str, int] | None = None,
    names: list[str] | None = None,
    timeout_s: float = 90.0,
) -> list[RoleProcess]:
    """Start the scheduler, billing, trust, the autoscaler, the fleet manager, the views
    (HTTP on `views_port`) and the agents; return once all are ready.

    `members` (else the `members` setting): how many members of a role to start
    (`scheduler`, `scheduler-2`, ...; `scheduler=2` says the same for the scheduler,
    and `limiter` adds limiter members of their own). Members share their role's
    consumer group, so its partitions are split between them (each keeps a single
    writer, fenced by transactions). `names`: start only these members (a restart).
    """
    counts = {**settings.members, **(members or {})}
    if isinstance(scheduler, int) and not isinstance(scheduler, bool) and scheduler > 1:
        counts["scheduler"] = scheduler
    # The members' processes see the counts (a scheduler leaves the limiter to limiter
    # members when there are any).
    settings = settings.model_copy(update={"members": counts})
    if any(n > 1 for role, n in counts.items() if role != "views"):
        # Several members of a role are only safe fenced: they write in transactions.
        settings = settings.model_copy(update={"transactions": True})
    wanted = {"scheduler": bool(scheduler), "billing": billing, "trust": trust,
              "limiter": "limiter" in counts, "views": views_port is not None}
    roles: list[RoleProcess] = []
    for role in ("scheduler", "billing", "trust", "limiter"):
        if not wanted[role]:
            continue
        for name in member_names(role, counts.get(role, 1)):
            if names is None or name in names:
                roles.append(_spawn(settings, name, worker_command(role)))
    if autoscaler:  # True, or the autoscaler's extra options
        extra = autoscaler if isinstance(autoscaler, list) else []
        roles.append(_spawn(settings, "autoscaler", worker_command("autoscaler", *extra)))
    if fleet is not None:  # the fleet manager's options for the agents it starts
        roles.append(_spawn(settings, "fleet", worker_command("fleet", *fleet)))
    if views_port is not None:
        from onceflow.infra.broker import free_port

        for i, name in enumerate(member_names("views", counts.get("views", 1))):
            if names is None or name in names:
                port = views_port if i == 0 else free_port()
                roles.append(_spawn(settings, name, worker_command("views", "--port",
                                                                   str(port))))
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
