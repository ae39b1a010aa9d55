"""The anomaly checker on the broker, and `onceflow anomalies --fail-on-flag`."""

from __future__ import annotations

import subprocess
import sys

import pytest

from onceflow.billing import read_anomalies
from onceflow.billing.worker import build_anomaly_checker
from onceflow.schemas import SingleObjectCodec
from onceflow.settings import OnceflowSettings
from onceflow.streams.kafka import EventProducer
from onceflow.streams.topics import TopicCatalog, create_topics
from tests.billing.fixtures import Books, accepted
from tests.fixtures import event_messages, running, wait_for

pytestmark = [pytest.mark.integration]


def _anomalies_cli(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "onceflow.infra.cli", "anomalies", "--fail-on-flag",
                           "--format", "json"], env=env, text=True, capture_output=True,
                          timeout=120)


def test_a_second_charge_for_one_source_is_flagged_and_fails_the_cli(
        settings: OnceflowSettings, uid: str, subprocess_env: dict[str, str]) -> None:
    create_topics(settings)
    catalog = TopicCatalog(settings)
    assert _anomalies_cli(subprocess_env).returncode == 0  # nothing found yet
    books = Books()
    books.feed(accepted("wu1"), accepted("wu2"))
    (first, second) = books.line_items
    forged = first.model_copy(update={"line_item_id": "forged", "event_id": "forged"})
    producer = EventProducer(settings, SingleObjectCodec())
    for item in (first, second, forged):
        producer.send(catalog["ledger"], item)
    producer.flush()
    with running(build_anomaly_checker(settings, group_id=f"anomalies-{uid}")):
        found = wait_for(lambda: read_anomalies(settings), timeout=60, what="a finding")
    assert [(f.check, f.subject_id, f.expected) for f in found] == [
        ("duplicate_line_item", "forged", first.line_item_id)]

    # Its state lost and its position too: it reads everything again, finds the
    # same thing again, and sends nothing twice.
    again = settings.model_copy(update={"state_dir": settings.state_dir / "again"})
    checker = build_anomaly_checker(again, group_id=f"anomalies2-{uid}")
    with running(checker):
        wait_for(lambda: checker.processed >= 3, timeout=60, what="the ledger read again")
    assert len(event_messages(settings, catalog["anomalies"].name)) == 1
    cli = _anomalies_cli(subprocess_env)
    assert cli.returncode == 2, cli.stderr
    assert '"duplicate_line_item"' in cli.stdout
