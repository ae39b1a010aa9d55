"""What a node runs: cpu handlers and world-changing tools, registered by name.

A handler is a plain function of a `TaskContext`; a tool adds an optional
`readback` that tells whether its effect already happened, which is what
lets the scheduler retry a `readback`-class unit without applying it twice.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from onceflow.schemas import ContentRef

__all__ = [
    "HandlerError",
    "RetryableError",
    "TaskContext",
    "Tool",
    "handler",
    "import_handler_modules",
    "lookup_handler",
    "lookup_tool",
    "register_handler",
    "register_tool",
]


class HandlerError(Exception):
    """A handler's failure with an error class; the scheduler decides retries by the class."""

    code = "handler_error"

    def __init__(self, message: str, code: str | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code


class RetryableError(HandlerError):
    code = "network_transient"


@dataclass(frozen=True)
class TaskContext:
    work_unit_id: str
    attempt: int
    tenant_id: str
    session_id: str
    parameters: dict[str, str]
    simulated_ms: int = 0
    prompt: str | None = None
    model: str | None = None
    idempotency_key: str | None = None
    input_bytes: bytes | None = None
    parent_results: list[bytes] = field(default_factory=list)
    parent_refs: list[ContentRef] = field(default_factory=list)
    node_id: str = ""
    #: set when an operator cancels the unit while it runs: a handler that waits or
    #: loops checks it (`raise_if_cancelled`) and stops; one that ignores it finishes,
    #: and its result is refused
    cancelled: threading.Event = field(default_factory=threading.Event, compare=False)

    def raise_if_cancelled(self) -> None:
        if self.cancelled.is_set():
            raise HandlerError(f"work unit {self.work_unit_id} was cancelled", "cancelled")


Handler = Callable[[TaskContext], bytes]


@dataclass(frozen=True)
class Tool:
    apply: Handler
    readback: Callable[[TaskContext], bytes | None] | None = None
    description: str = ""


_HANDLERS: dict[str, Handler] = {}
_TOOLS: dict[str, Tool] = {}


def register_handler(name: str, fn: Handler) -> Handler:
    _HANDLERS[name] = fn
    return fn


def handler(name: str) -> Callable[[Handler], Handler]:
    """Decorator form of `register_handler`."""
    return lambda fn: register_handler(name, fn)


def register_tool(name: str, tool: Tool) -> Tool:
    _TOOLS[name] = tool
    return tool


def lookup_handler(name: str | None) -> Handler:
    key = name or "simulate"
    if key not in _HANDLERS:
        raise HandlerError(
            f"no cpu handler named {key!r}; registered: {', '.join(sorted(_HANDLERS))}. "
            "Register one with agents.register_handler or list its module in "
            "ONCEFLOW_AGENT__HANDLER_MODULES", code="unknown_handler")
    return _HANDLERS[key]


def lookup_tool(name: str | None) -> Tool:
    key = name or "effects.append"
    if key not in _TOOLS:
        raise HandlerError(f"no tool named {key!r}; registered: {', '.join(sorted(_TOOLS))}",
                           code="unknown_handler")
    return _TOOLS[key]


def import_handler_modules(modules: Iterable[str]) -> None:
    for module in modules:
        importlib.import_module(module)


# -- built-in cpu handlers ------------------------------------------------------------------


def _json(value: object) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


@handler("simulate")
def _simulate(ctx: TaskContext) -> bytes:
    """The demo workload: busy for `simulated_ms`, then a small deterministic result."""
    if ctx.simulated_ms and ctx.cancelled.wait(ctx.simulated_ms / 1000):
        ctx.raise_if_cancelled()  # stopped early: the unit was cancelled
    return _json({"work_unit_id": ctx.work_unit_id, "simulated_ms": ctx.simulated_ms})


@handler("sha256")
def _sha256(ctx: TaskContext) -> bytes:
    data = ctx.input_bytes or ctx.parameters.get("text", "").encode()
    for parent in ctx.parent_results:
        data += parent
    return _json({"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)})


@handler("fail")
def _fail(ctx: TaskContext) -> bytes:
    """Fails with the error class in `parameters.error_code` (tests and demos of recovery)."""
    code = ctx.parameters.get("error_code", "handler_error")
    raise HandlerError(f"asked to fail with {code}", code=code)


@handler("fail_on_nodes")
def _fail_on_nodes(ctx: TaskContext) -> bytes:
    """Fails on the nodes listed in `parameters.nodes` (comma-separated), simulates elsewhere:
    an unreliable node, for trust scoring's tests and demos."""
    if ctx.node_id in ctx.parameters.get("nodes", "").split(","):
        raise HandlerError(f"node {ctx.node_id} is set to fail this unit", code="node_fault")
    return _simulate(ctx)


# -- the built-in tool: an append-only effects table in SQLite ------------------------------


def _effects_db(ctx: TaskContext) -> sqlite3.Connection:
    path = Path(ctx.parameters.get("db", ".onceflow/effects.sqlite"))
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path, timeout=30, isolation_level=None)
    conn.execute(
        "CREATE TABLE IF NOT EXISTS effects (work_unit_id TEXT NOT NULL, attempt INTEGER, "
        "idempotency_key TEXT UNIQUE, applied_at INTEGER)"
    )
    return conn


def _append(ctx: TaskContext) -> bytes:
    """Records one row per application: the outside world a test can count.

    With `parameters.honour_key = "true"` the key is stored, and the UNIQUE
    constraint makes a second application with the same key a no-op (what a
    `token`-class API does); otherwise every call adds a row.
    """
    if ctx.simulated_ms:
        time.sleep(ctx.simulated_ms / 1000)
    key = ctx.idempotency_key if ctx.parameters.get("honour_key") == "true" else None
    conn = _effects_db(ctx)
    try:
        conn.execute(
            "INSERT OR IGNORE INTO effects VALUES (?, ?, ?, ?)",
            (ctx.work_unit_id, ctx.attempt, key, int(time.time() * 1000)),
        )
    finally:
        conn.close()
    return _json({"applied": ctx.work_unit_id})


def _append_readback(ctx: TaskContext) -> bytes | None:
    conn = _effects_db(ctx)
    try:
        row = conn.execute("SELECT 1 FROM effects WHERE work_unit_id = ? LIMIT 1",
                           (ctx.work_unit_id,)).fetchone()
    finally:
        conn.close()
    return _json({"applied": ctx.work_unit_id, "from": "readback"}) if row else None


register_tool("effects.append", Tool(_append, _append_readback,
                                     "append a row to an effects table in SQLite"))
# The same table as a cpu handler: a user's handler that changes the world (charges a card,
# sends a mail) is labelled WORLD_MUTATING like a tool, and staged and recovered the same way.
register_handler("effects.append", _append)
