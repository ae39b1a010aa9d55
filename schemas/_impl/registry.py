"""The schema registry every codec reads from: current and released schemas.

Current schemas are the `.avsc` files in `schemas/avro/`; released ones live
in `schemas/released/<version>/`. A reader knows every released fingerprint,
so data written by an older producer still decodes (resolved to the current
reader schema), which is what makes rolling upgrades safe.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from fastavro import parse_schema
from fastavro.schema import fingerprint, to_parsing_canonical_form

from onceflow.schemas._impl.compiled import CompiledSchema, compile_schema
from onceflow.schemas._impl.construct import BodyDecoder, Builder, model_builders
from onceflow.schemas._impl.errors import UnknownEventTypeError, UnknownSchemaError
from onceflow.schemas._impl.events import EVENT_MODELS, Event

__all__ = [
    "EventSchema",
    "SchemaRegistry",
    "avro_fingerprint",
    "default_registry",
    "schema_dir",
]


def schema_dir() -> Path:
    return Path(str(resources.files("onceflow.schemas"))) / "avro"


def released_dir() -> Path:
    return Path(str(resources.files("onceflow.schemas"))) / "released"


def avro_fingerprint(schema: dict[str, Any]) -> bytes:
    """The 8-byte CRC-64-AVRO fingerprint of the schema's canonical form, header order."""
    canonical = to_parsing_canonical_form(parse_schema(schema, _write_hint=False))
    return bytes.fromhex(fingerprint(canonical, "CRC-64-AVRO"))


@dataclass(frozen=True)
class EventSchema:
    event_type: str
    model: type[Event] | None
    schema: dict[str, Any]
    parsed: Any
    fingerprint: bytes
    released: str | None = None
    #: the schema compiled to Python (current schemas only: an older writer's
    #: data is resolved to the current schema by fastavro); None: fastavro
    compiled: CompiledSchema | None = None
    #: builds the model from a record decoded with this schema, checking only what
    #: Avro did not (see `construct`); None: `model_validate`
    build: Builder | None = None
    #: reads a body and builds the model in one call (compiled schemas with a model)
    decode_body: BodyDecoder | None = None


@dataclass
class SchemaRegistry:
    """Event type -> current schema, fingerprint -> writer schema."""

    by_type: dict[str, EventSchema] = field(default_factory=dict)
    by_fingerprint: dict[bytes, EventSchema] = field(default_factory=dict)
    by_name: dict[str, EventSchema] = field(default_factory=dict)

    def register(
        self, event_type: str, schema: dict[str, Any], model: type[Event] | None = None
    ) -> EventSchema:
        """Add a current schema (users register their own event types the same way)."""
        compiled = compile_schema(schema)
        builders = None if model is None else model_builders(
            model, schema, None if compiled is None else compiled.read)
        entry = EventSchema(
            event_type=event_type,
            model=model,
            schema=schema,
            parsed=parse_schema(schema),
            fingerprint=avro_fingerprint(schema),
            compiled=compiled,
            build=None if builders is None else builders[0],
            decode_body=None if builders is None else builders[1],
        )
        self.by_type[event_type] = entry
        self.by_fingerprint[entry.fingerprint] = entry
        self.by_name[_full_name(schema)] = entry
        return entry

    def register_released(self, version: str, schema: dict[str, Any]) -> None:
        """Remember an older writer schema so its data resolves to the current one."""
        fp = avro_fingerprint(schema)
        if fp in self.by_fingerprint:
            return
        current = self.by_name.get(_full_name(schema))
        if current is None:
            return  # a retired event type: nothing current can read it into
        self.by_fingerprint[fp] = EventSchema(
            event_type=current.event_type,
            model=current.model,
            schema=schema,
            parsed=parse_schema(schema),
            fingerprint=fp,
            released=version,
        )

    def for_type(self, event_type: str) -> EventSchema:
        try:
            return self.by_type[event_type]
        except KeyError:
            raise UnknownEventTypeError(
                f"no schema registered for event type {event_type!r}; "
                f"known types: {', '.join(sorted(self.by_type))}"
            ) from None

    def for_fingerprint(self, fp: bytes) -> EventSchema:
        try:
            return self.by_fingerprint[fp]
        except KeyError:
            raise UnknownSchemaError(
                f"unknown writer schema fingerprint {fp.hex()}: the producer used a schema "
                "this reader has never seen (upgrade the reader or register the schema)"
            ) from None


def _full_name(schema: dict[str, Any]) -> str:
    ns = schema.get("namespace")
    return f"{ns}.{schema['name']}" if ns else str(schema["name"])


def load_avsc(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def _build_default() -> SchemaRegistry:
    registry = SchemaRegistry()
    models = {m.EVENT_TYPE: m for m in EVENT_MODELS}
    for path in sorted(schema_dir().glob("*.avsc")):
        event_type = path.name.removesuffix(".avsc")
        registry.register(event_type, load_avsc(path), models.get(event_type))
    rel = released_dir()
    if rel.is_dir():
        for version_dir in sorted(p for p in rel.iterdir() if p.is_dir()):
            for path in sorted(version_dir.glob("*.avsc")):
                registry.register_released(version_dir.name, load_avsc(path))
    return registry


_DEFAULT: SchemaRegistry | None = None


def default_registry() -> SchemaRegistry:
    """The process-wide registry of onceflow's own event types (built once)."""
    global _DEFAULT
    if _DEFAULT is None:
        _DEFAULT = _build_default()
    return _DEFAULT
