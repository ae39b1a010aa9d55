"""Helpers for the tests that drive the `onceflow` command line against a stack it starts."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from pathlib import Path

from onceflow.settings import OnceflowSettings

__all__ = ["onceflow", "role_stacks", "stack_env"]


def onceflow(args: list[str], env: dict[str, str], check: bool = True
             ) -> subprocess.CompletedProcess[str]:
    """Run `onceflow ARGS` as a user would, in its own process."""
    return subprocess.run([sys.executable, "-m", "onceflow.infra.cli", *args], env=env,
                          text=True, capture_output=True, check=check, timeout=180)


def stack_env(tmp_path: Path, agents: int = 2) -> dict[str, str]:
    """A clean environment for a stack of its own under `tmp_path`: three partitions, and
    the agents `up` starts stay the fleet (autoscaling has its own test)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ONCEFLOW_")}
    env.update({"ONCEFLOW_STACK_DIR": str(tmp_path / "stack"), "ONCEFLOW_PARTITIONS": "3",
                "ONCEFLOW_AUTOSCALER__MIN_REPLICAS": str(agents),
                "ONCEFLOW_AUTOSCALER__MAX_REPLICAS": str(agents),
                "ONCEFLOW_AUTOSCALER__INITIAL_REPLICAS": str(agents)})
    return env


def role_stacks(settings: OnceflowSettings, lines: int = 60) -> str:
    """Where every role process of a stack is: each dumps its threads' stacks into its log
    (SIGUSR1, which `onceflow worker` registers), and the tail of each log is returned
    (what a test that failed waiting prints, so CI's output says what was stuck)."""
    import signal
    import time

    from onceflow.infra.stack import read_stack

    state = read_stack(settings)
    if state is None:
        return "no stack"
    for pid in state.processes.values():
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGUSR1)
    logs = sorted((Path(settings.stack_dir) / "logs").glob("*.log"))

    def dumped() -> bool:
        return all("Current thread" in p.read_text(errors="replace")
                   or "Thread 0x" in p.read_text(errors="replace") for p in logs)

    deadline = time.monotonic() + 10
    while not dumped() and time.monotonic() < deadline:
        time.sleep(0.1)  # polling for the dumps to be written, with a deadline
    out = []
    for path in logs:
        tail = [line for line in path.read_text(errors="replace").splitlines()
                if not line.startswith("%")][-lines:]
        out.append(f"==== {path.name}\n" + "\n".join(tail))
    return "\n".join(out)
