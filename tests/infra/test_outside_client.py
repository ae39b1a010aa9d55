"""A client that knows only the contracts: the `.avsc` files, the topic names, the key and
partition rules and the dead-letter headers. Its code uses nothing of onceflow; the platform
it talks to is onceflow's roles, running as processes on the embedded Kafka."""

from __future__ import annotations

import io
import json
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition
from fastavro import parse_schema, schemaless_reader, schemaless_writer
from fastavro.schema import fingerprint, to_parsing_canonical_form

from tests.fixtures import wait_for  # the test harness's polling, not onceflow code

pytestmark = pytest.mark.integration

AVSC = Path(__file__).resolve().parents[2] / "schemas" / "avro"


class Contracts:
    """Single-object Avro (`C3 01`, the CRC-64-AVRO fingerprint, the body), by the spec."""

    def __init__(self) -> None:
        self.by_type: dict[str, tuple[bytes, Any]] = {}
        self.by_fingerprint: dict[bytes, tuple[str, Any]] = {}
        for path in sorted(AVSC.glob("*.avsc")):
            parsed = parse_schema(json.loads(path.read_text()))
            fp = bytes.fromhex(fingerprint(to_parsing_canonical_form(parsed), "CRC-64-AVRO"))
            self.by_type[path.name.removesuffix(".avsc")] = (fp, parsed)
            self.by_fingerprint[fp] = (path.name.removesuffix(".avsc"), parsed)

    def encode(self, event_type: str, record: dict[str, Any]) -> bytes:
        fp, schema = self.by_type[event_type]
        body = io.BytesIO()
        schemaless_writer(body, schema, record)
        return b"\xc3\x01" + fp + body.getvalue()

    def decode(self, raw: bytes) -> tuple[str, dict[str, Any]] | None:
        if raw[:2] != b"\xc3\x01" or raw[2:10] not in self.by_fingerprint:
            return None
        event_type, schema = self.by_fingerprint[raw[2:10]]
        return event_type, schemaless_reader(io.BytesIO(raw[10:]), schema)


def _partition(entity_id: str, partitions: int) -> int:
    return zlib.crc32(entity_id.encode()) % partitions  # the documented rule


def _read(bootstrap: str, topic: str, partitions: int) -> Iterator[Any]:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "outside-reader",
                         "enable.auto.commit": False, "enable.partition.eof": True})
    try:
        consumer.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
        ends = {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
                for p in range(partitions)}
        left = {p for p, end in ends.items() if end > 0}
        while left:
            for msg in consumer.consume(500, 1.0):
                if msg.error() is not None:
                    if msg.error().code() == KafkaError._PARTITION_EOF:
                        left.discard(msg.partition())
                    continue
                if msg.offset() + 1 >= ends[msg.partition()]:
                    left.discard(msg.partition())
                yield msg
    finally:
        consumer.close()


def test_an_outside_client_submits_and_reads_back_results_line_items_and_dead_letters(
        settings: Any) -> None:
    # The platform: onceflow's roles as processes (the client below does not touch them).
    from onceflow.infra.roles import agent_specs, start_roles, stop_roles
    from onceflow.streams.topics import create_topics

    create_topics(settings)
    roles = start_roles(settings, agent_specs(2, concurrency=4), billing=True)
    try:
        _outside_client(settings.bootstrap_servers, settings.topic_prefix, settings.partitions)
    finally:
        stop_roles(roles)


def _outside_client(bootstrap: str, prefix: str, partitions: int) -> None:
    contracts = Contracts()
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True})
    units = [f"outside-{i}" for i in range(20)]
    now = int(time.time() * 1000)
    for i, wu in enumerate(units):
        record = {"event_id": f"outside-submit-{i}", "occurred_at": now, "tenant_id": "outsider",
                  "execution_session_id": "outside-session", "work_unit_id": wu,
                  "kind": "llm_pod" if i % 4 == 0 else "cpu", "simulated_ms": 2,
                  "prompt": "hello" if i % 4 == 0 else None}
        # keyed by event id, partitioned by work unit (the topic catalog's rule)
        producer.produce(f"{prefix}submissions", contracts.encode("workunit.submitted", record),
                         key=record["event_id"], partition=_partition(wu, partitions))
    producer.produce(f"{prefix}submissions", b"\x00 not avro", key=b"outside-garbage",
                     partition=0)
    assert producer.flush(30) == 0

    def completed() -> dict[str, dict[str, Any]] | None:
        done: dict[str, dict[str, Any]] = {}
        for msg in _read(bootstrap, f"{prefix}workunits", partitions):
            decoded = contracts.decode(msg.value() or b"")
            if decoded and decoded[0] == "workunit.completed" and decoded[1]["accepted"]:
                done[decoded[1]["work_unit_id"]] = decoded[1]
        return done if set(units) <= set(done) else None

    results = wait_for(completed, timeout=120, interval=0.5, what="every unit completed")
    assert all(results[wu]["result_ref"] for wu in units)

    def line_items() -> list[dict[str, Any]] | None:
        items = [d[1] for msg in _read(bootstrap, f"{prefix}ledger", partitions)
                 if (d := contracts.decode(msg.value() or b"")) and d[0] == "ledger.line_item"]
        billed = {(i["work_unit_id"], i["line_item_type"]) for i in items if i["billed"]}
        want = {(wu, "workunit_cpu") for wu in units}
        return items if want <= billed else None

    items = wait_for(line_items, timeout=120, interval=0.5, what="every unit billed")
    assert {i["tenant_id"] for i in items} == {"outsider"}
    assert any(i["line_item_type"] == "llm_tokens" and i["llm_tokens"] > 0 for i in items)
    assert len({i["line_item_id"] for i in items}) == len(items)

    def dead() -> Any:
        for msg in _read(bootstrap, f"{prefix}deadletters", partitions):
            if msg.value() == b"\x00 not avro":
                return msg
        return None

    letter = wait_for(dead, timeout=60, interval=0.5, what="the garbage dead-lettered")
    headers = dict(letter.headers())
    assert headers["onceflow.dlq.origin.topic"] == f"{prefix}submissions".encode()
    assert headers["onceflow.dlq.origin.partition"] == b"0"
    assert int(headers["onceflow.dlq.origin.offset"]) >= 0
    assert headers["onceflow.dlq.error"]
