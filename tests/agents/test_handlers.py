"""Handlers and tools by name: built-ins, registration, the effects tool's key and readback."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from onceflow.agents import HandlerError, TaskContext, lookup_handler, lookup_tool, register_handler
from tests.agents.fixtures import effect_rows


def ctx(tmp_path: Path, **kw: object) -> TaskContext:
    base: dict[str, object] = dict(work_unit_id="wu-1", attempt=1, tenant_id="t", session_id="s",
                                   parameters={"db": str(tmp_path / "fx.sqlite")},
                                   idempotency_key="key-1")
    base.update(kw)
    return TaskContext(**base)  # type: ignore[arg-type]


def test_simulate_is_the_default_and_returns_a_deterministic_result(tmp_path: Path) -> None:
    out = lookup_handler(None)(ctx(tmp_path, simulated_ms=1))
    assert json.loads(out) == {"work_unit_id": "wu-1", "simulated_ms": 1}


def test_sha256_hashes_input_and_parent_results(tmp_path: Path) -> None:
    one = lookup_handler("sha256")(ctx(tmp_path, input_bytes=b"a", parent_results=[b"b"]))
    two = lookup_handler("sha256")(ctx(tmp_path, input_bytes=b"ab"))
    assert json.loads(one)["sha256"] == json.loads(two)["sha256"]


def test_unknown_handler_names_the_registered_ones_and_the_fix() -> None:
    with pytest.raises(HandlerError) as err:
        lookup_handler("nope")
    assert err.value.code == "unknown_handler"
    assert "simulate" in str(err.value) and "register_handler" in str(err.value)


def test_registered_handlers_are_found_by_name(tmp_path: Path) -> None:
    register_handler("tests.upper", lambda c: (c.parameters.get("text") or "").upper().encode())
    assert lookup_handler("tests.upper")(ctx(tmp_path, parameters={"text": "hi"})) == b"HI"


def test_fail_handler_raises_its_error_class(tmp_path: Path) -> None:
    with pytest.raises(HandlerError) as err:
        lookup_handler("fail")(ctx(tmp_path, parameters={"error_code": "network_transient"}))
    assert err.value.code == "network_transient"


def test_effects_tool_applies_every_call_unless_the_key_is_honoured(tmp_path: Path) -> None:
    tool = lookup_tool(None)
    db = tmp_path / "fx.sqlite"
    plain = ctx(tmp_path)
    tool.apply(plain)
    tool.apply(plain)
    assert effect_rows(db)["wu-1"] == 2
    keyed = ctx(tmp_path, work_unit_id="wu-2",
                parameters={"db": str(db), "honour_key": "true"})
    tool.apply(keyed)
    tool.apply(keyed)
    assert effect_rows(db)["wu-2"] == 1


def test_effects_tool_readback_sees_an_applied_effect(tmp_path: Path) -> None:
    tool = lookup_tool("effects.append")
    assert tool.readback is not None
    c = ctx(tmp_path)
    assert tool.readback(c) is None
    tool.apply(c)
    assert tool.readback(c) is not None
