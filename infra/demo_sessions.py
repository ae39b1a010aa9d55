"""`onceflow demo --scenario sessions`: agent sessions steered while they run.

Four sessions of the same shape run on the local stack: an LLM step drafts, a
world-mutating tool step that needs an approval acts on the draft, an input
step asks a person, and a last step finishes with both answers. The demo is
the operator; every action it takes is a control on the log, as `onceflow
pause | resume | cancel | approve | deny | input` would send:

- `answered`: its approval and its input are given;
- `paused`: paused before its steps run, resumed, then answered;
- `cancelled`: cancelled while a long step runs (its agent stops it);
- `expired`: nobody approves; at its deadline the tool step fails closed and
  nothing is applied.
"""

from __future__ import annotations

import secrets
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from rich.console import Console
from rich.table import Table

from onceflow.infra.readmodel import ReadApi
from onceflow.infra.sessions import SESSION_ENDED
from onceflow.infra.stack import local_settings, stack_down, stack_up, start_stack_roles
from onceflow.schemas import (
    ControlAction,
    ControlHumanInputSubmitted,
    ControlRequested,
    Event,
    SingleObjectCodec,
    WorkUnitSubmitted,
)
from onceflow.settings import OnceflowSettings
from onceflow.streams.content import open_content_store
from onceflow.streams.kafka import EventProducer
from onceflow.streams.topics.catalog import TopicCatalog

__all__ = ["SCENARIOS", "run_sessions_demo"]

SCENARIOS = ("burst", "sessions")
_TENANT = "demo"


def _steps(session: str, run: str, effects: Path, *, long_ms: int = 300,
           approval_ms: int = 120_000) -> list[WorkUnitSubmitted]:
    now = int(time.time() * 1000)

    def step(name: str, **fields: Any) -> WorkUnitSubmitted:
        wu = f"{session}-{name}-{run}"
        return WorkUnitSubmitted(event_id=f"sub-{wu}", occurred_at=now, tenant_id=_TENANT,
                                 execution_session_id=f"{session}-{run}", work_unit_id=wu,
                                 lease_ms=max(5_000, 2 * long_ms), **fields)

    draft = step("draft", kind="llm_pod", prompt=f"Draft a reply for {session}",
                 parameters={"max_tokens": "64"})
    act = step("send", kind="tool", effect="WORLD_MUTATING", handler="effects.append",
               parameters={"db": str(effects)}, depends_on=[draft.work_unit_id or ""],
               requires_approval=True, approval_timeout_ms=approval_ms)
    ask = step("ask", kind="input", prompt="Anything to add?", approval_timeout_ms=120_000)
    finish = step("finish", simulated_ms=long_ms,
                  depends_on=[act.work_unit_id or "", ask.work_unit_id or ""])
    return [draft, act, ask, finish]


def run_sessions_demo(settings: OnceflowSettings, console: Console, timeout_s: float = 120.0,
                      keep: bool = False) -> int:
    state, _, _ = stack_up(settings)
    console.print(f"[bold]onceflow demo --scenario sessions[/]: broker at {state.bootstrap}")
    settings = local_settings(settings)
    code = 0
    try:
        start_stack_roles(settings, agents=2, concurrency=4, region=None, llm_provider="stub")
        catalog = TopicCatalog(settings)
        # one producer, dropped before the broker stops (a client must not outlive it)
        producers = [EventProducer(settings, SingleObjectCodec())]
        store = open_content_store(settings)
        reads = ReadApi(settings)
        run = secrets.token_hex(3)
        effects = settings.stack_dir / "demo-effects.sqlite"
        sessions = {
            "answered": _steps("answered", run, effects),
            "paused": _steps("paused", run, effects),
            "cancelled": _steps("cancelled", run, effects, long_ms=30_000),
            "expired": _steps("expired", run, effects, approval_ms=3_000),
        }

        def send(event: Event) -> None:
            producers[0].send(catalog["control"], event)
            producers[0].flush()

        def control(action: ControlAction, session: str, unit: str | None = None) -> None:
            target: dict[str, Any] = ({"work_unit_id": unit} if unit else
                                      {"execution_session_id": f"{session}-{run}"})
            send(ControlRequested(
                event_id=uuid.uuid4().hex, occurred_at=int(time.time() * 1000),
                tenant_id=_TENANT, action=action, scope="unit" if unit else "session",
                requested_by="demo-operator", reason=f"the {session} scenario", **target))
            console.print(f"  operator: {action} {unit or f'session {session}-{run}'}")

        def answer(session: str) -> None:
            ref = store.put(b'{"note": "ship it"}', "application/json")
            wu = f"{session}-ask-{run}"
            send(ControlHumanInputSubmitted(
                event_id=uuid.uuid4().hex, occurred_at=int(time.time() * 1000),
                tenant_id=_TENANT, execution_session_id=f"{session}-{run}", work_unit_id=wu,
                prompt_id=wu, input_ref=ref, submitted_by="demo-operator"))
            console.print(f"  person: answered {wu}")

        def view(session: str) -> Any:
            """The session as the read model has it (its state, each step's)."""
            found = reads.get(f"/sessions/{session}-{run}", {"owner": _TENANT},
                              missing_ok=True)
            if found is None:
                return None
            return SimpleNamespace(state=found["state"], steps={
                s["work_unit_id"]: SimpleNamespace(state=s["state"], reason=s["reason"])
                for s in found["dag"]})

        def wait(what: str, done: Callable[[], bool]) -> None:
            deadline = time.monotonic() + timeout_s
            while not done():
                if time.monotonic() > deadline:
                    raise TimeoutError(f"timed out waiting for {what}")
                time.sleep(0.3)  # polling the log for the sessions to move

        def step_state(session: str, name: str) -> str:
            """A step's state, with what it waits for: `waiting:awaiting_approval`."""
            v = view(session)
            step = v.steps.get(f"{session}-{name}-{run}") if v else None
            if step is None:
                return ""
            return f"{step.state}:{step.reason}" if step.state == "waiting" else step.state

        asked = "waiting:awaiting_approval"

        control("pause", "paused")  # before its steps arrive: they wait
        for steps in sessions.values():
            for unit in steps:
                producers[0].send(catalog["submissions"], unit)
        producers[0].flush()
        console.print(f"submitted 4 sessions of 4 steps (run {run})")
        wait("the approvals to be asked", lambda: all(
            step_state(name, "send") == asked for name in ("answered", "cancelled")))
        control("approve", "answered", f"answered-send-{run}")
        answer("answered")
        wait("the paused session to hold", lambda: (v := view("paused")) is not None
             and v.state == "paused")
        control("resume", "paused")
        wait("the resumed session to ask", lambda: step_state("paused", "send") == asked)
        control("approve", "paused", f"paused-send-{run}")
        answer("paused")
        control("approve", "cancelled", f"cancelled-send-{run}")
        answer("cancelled")
        wait("the long step to run", lambda: step_state("cancelled", "finish") == "running")
        control("cancel", "cancelled")
        answer("expired")  # but nobody approves its tool step

        def ended() -> bool:
            views = [view(s) for s in sessions]
            return all(v is not None and v.state in SESSION_ENDED
                       for v in views)

        wait("every session to end", ended)
        table = Table("session", "state", "steps", title="sessions")
        expected = {"answered": "completed", "paused": "completed", "cancelled": "cancelled",
                    "expired": "failed"}
        for name in sessions:
            v = view(name)
            assert v is not None
            table.add_row(f"{name}-{run}", v.state, ", ".join(
                f"{(u.work_unit_id or '').rsplit('-', 1)[0].split('-', 1)[1]}={s.state}"
                + (f" ({s.reason})" if s.reason and s.state != "completed" else "")
                for u in sessions[name] if (s := v.steps[u.work_unit_id or ""])))
            if v.state != expected[name]:
                code = 1
        console.print(table)
        console.print("every session ended as its scenario says" if not code else
                      "[bold red]a session did not end as its scenario says[/]")
        producers.clear()
    finally:
        if not keep:
            for name in stack_down(settings):
                console.print(f"stopped {name}")
    return code
