"""Helpers for the tests that drive the `onceflow` command line against a stack it starts."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

__all__ = ["onceflow", "stack_env"]


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
