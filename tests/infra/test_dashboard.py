"""The dashboard in headless Chromium (Debian's, driven by Playwright) against a stack that
`onceflow up` starts: its numbers match `onceflow status` and the ledger, and an approval
clicked on the page lets the unit run.

With ONCEFLOW_DOCS_SCREENSHOTS=<dir> the test also writes its screenshots there (that is
how the ones in docs/images/ are made)."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, Page, sync_playwright

from tests.fixtures import wait_for
from tests.infra.fixtures import onceflow, stack_env

pytestmark = pytest.mark.integration

CHROMIUM = "/usr/bin/chromium"
#: what a closed network needs: no background fetches, no QUIC, no first-run work
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync"]
UNITS = 40
ACME = {"X-Onceflow-Tenant": "acme"}
#: a session: fetch, two LLM steps on it, and an email that waits for a person's approval
SESSION = [
    {"work_unit_id": "fetch", "handler": "sha256", "simulated_ms": 200},
    {"work_unit_id": "summarise", "kind": "llm_pod", "prompt": "summarise it",
     "model": "stub", "depends_on": ["fetch"]},
    {"work_unit_id": "classify", "kind": "llm_pod", "prompt": "classify it", "model": "stub",
     "depends_on": ["fetch"]},
    {"work_unit_id": "send-email", "kind": "tool", "handler": "effects.append",
     "effect": "WORLD_MUTATING", "idempotency_class": "token", "requires_approval": True,
     "depends_on": ["summarise", "classify"]},
]


@pytest.fixture
def browser() -> Iterator[Browser]:
    assert Path(CHROMIUM).exists(), (
        f"{CHROMIUM} is missing: `make test` installs Debian's chromium "
        "(apt-get install chromium)")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


def cards(page: Page) -> dict[str, int]:
    """Units by state as the page shows them."""
    out: dict[str, int] = page.eval_on_selector_all(
        "#units .card", "els => Object.fromEntries(els.map("
                        "e => [e.dataset.state, Number(e.querySelector('b').textContent)]))")
    return out


def node_table(page: Page) -> dict[str, dict[str, str]]:
    rows: list[list[str]] = page.eval_on_selector_all(
        "#nodes tbody tr", "rows => rows.map(r => [...r.cells].map(c => c.textContent))")
    return {r[0]: {"health": r[1], "breaker": r[3], "completed": r[9]} for r in rows}


def table_rows(page: Page, table: str) -> list[list[str]]:
    rows: list[list[str]] = page.eval_on_selector_all(
        f"#{table} tbody tr", "rows => rows.map(r => [...r.cells].map(c => c.textContent))")
    return rows


def shoot(page: Page, tmp_path: Path, name: str) -> None:
    path = tmp_path / f"{name}.png"
    page.screenshot(path=str(path))
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    docs = os.environ.get("ONCEFLOW_DOCS_SCREENSHOTS")
    if docs:
        Path(docs).mkdir(parents=True, exist_ok=True)
        (Path(docs) / path.name).write_bytes(path.read_bytes())


def test_the_page_shows_what_status_shows_and_an_approval_clicked_runs_the_unit(
        tmp_path: Path, browser: Browser) -> None:
    env = stack_env(tmp_path, agents=2)
    up = onceflow(["up", "--agents", "2"], env)
    found = re.search(r"dashboard at (http://127\.0\.0\.1:\d+)/dashboard/", up.stdout)
    assert found, up.stdout
    url = found.group(1)
    try:
        onceflow(["submit", "--count", str(UNITS), "--quiet"], env)
        for step in SESSION:
            r = httpx.post(f"{url}/v1/control/units", headers=ACME, timeout=30,
                           json={**step, "execution_session_id": "research"})
            assert r.status_code == 202, r.text

        def status() -> dict[str, Any]:
            out: dict[str, Any] = json.loads(onceflow(["status", "--format", "json"],
                                                      env).stdout)
            return out

        # everything but the email ran; the email waits for its approval
        wait_for(lambda: status()["units"]["by_state"] == {"completed": UNITS + 3,
                                                           "waiting": 1},
                 timeout=90, interval=1.0, what="all but the approval to run")
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(f"{url}/dashboard/")
        page.wait_for_selector("#connection[data-state='live']")

        # The page converges on the numbers `onceflow status` prints.
        def page_matches_status() -> bool:
            s = status()
            nodes = node_table(page)
            return cards(page) == s["units"]["by_state"] and set(nodes) == {
                n["node_id"] for n in s["nodes"]} and all(
                nodes[n["node_id"]]["health"] == n["health"]
                and nodes[n["node_id"]]["breaker"] == n["breaker"]
                and int(nodes[n["node_id"]]["completed"])
                == s["units"]["completed_by_node"].get(n["node_id"], 0) for n in s["nodes"])
        wait_for(page_matches_status, timeout=30, interval=0.5,
                 what="the page to show what `onceflow status` shows")
        assert page.text_content("#units-total") == f"{UNITS + 4} in all"

        # Wallets and spend match the ledger.
        def acme_wallet() -> dict[str, Any]:
            out = onceflow(["ledger", "wallet", "acme", "--format", "json"], env, check=False)
            return json.loads(out.stdout) if out.returncode == 0 else {}

        # fetch's CPU and the two LLM calls' tokens (with their CPU)
        ledger = wait_for(lambda: (w := acme_wallet()).get("line_items", 0) >= 3 and w,
                          timeout=60, what="acme's work to be billed")

        def money_matches() -> bool:
            wallets = {r[0]: r for r in table_rows(page, "wallets")}
            row = wallets.get("tenant:acme")
            spend = [r for r in table_rows(page, "spend") if r[0] == "acme"]
            return row is not None and row[3] == ledger["debit_usd"] and \
                int(row[6]) == ledger["line_items"] and \
                sum((Decimal(r[2]) for r in spend), Decimal(0)) == Decimal(ledger["debit_usd"])
        wait_for(money_matches, timeout=30, interval=0.5, what="the page's wallet and spend")
        assert {r[1] for r in table_rows(page, "spend") if r[0] == "acme"} == {"cpu", "stub"}

        # The session and its DAG: the email step waits.
        page.click("#sessions tr[data-session='acme/research']")
        page.wait_for_selector("#dag g[data-step='send-email'][data-state='waiting']")
        for step in ("fetch", "summarise", "classify"):
            assert page.get_attribute(f"#dag g[data-step='{step}']", "data-state") == \
                "completed"
        row = page.wait_for_selector("#inbox tr[data-unit='send-email'][data-kind='approval']")
        assert row is not None
        shoot(page, tmp_path, "dashboard")

        # Approve it from the page: the unit runs, and leaves the inbox.
        page.click("#inbox tr[data-unit='send-email'] button[data-action='approve']")
        page.wait_for_selector("#action-result[data-outcome='applied']")
        page.wait_for_selector("#dag g[data-step='send-email'][data-state='completed']",
                               timeout=60_000)
        page.wait_for_selector("#inbox tr[data-unit='send-email']", state="detached")
        assert status()["units"]["by_state"] == {"completed": UNITS + 4}
        wait_for(lambda: cards(page) == {"completed": UNITS + 4}, timeout=30,
                 what="the page to count the email completed")
        shoot(page, tmp_path, "dashboard-approved")
        # a second approval of the same unit is refused
        refused = httpx.post(f"{url}/v1/control/actions", headers=ACME, timeout=30,
                             json={"action": "approve", "work_unit_id": "send-email"})
        assert refused.status_code == 409
    finally:
        onceflow(["down"], env)
