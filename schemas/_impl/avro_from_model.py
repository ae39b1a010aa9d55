"""Derive an Avro record schema from an event model.

The committed `.avsc` files are the contract other languages read; they are
produced by this module and a test fails if a model and its file disagree,
so the two cannot drift silently.
"""

from __future__ import annotations

import types
import typing
from decimal import Decimal
from typing import Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from onceflow.schemas._impl.events import Event
from onceflow.schemas._impl.types import quantize_money

__all__ = ["AVRO_NAMESPACE", "avro_schema_for"]

AVRO_NAMESPACE = "onceflow.events"


def _is_optional(annotation: Any) -> tuple[bool, Any]:
    origin = get_origin(annotation)
    if origin in (Union, types.UnionType):
        args = [a for a in get_args(annotation) if a is not type(None)]
        if len(args) == 1 and len(get_args(annotation)) == 2:
            return True, args[0]
    return False, annotation


def _strip_annotated(annotation: Any) -> Any:
    while get_origin(annotation) is typing.Annotated:
        annotation = get_args(annotation)[0]
    return annotation


def _avro_type(annotation: Any, defined: set[str]) -> Any:
    annotation = _strip_annotated(annotation)
    optional, inner = _is_optional(annotation)
    if optional:
        return ["null", _avro_type(inner, defined)]
    origin = get_origin(annotation)
    if origin is Literal or (origin in (Union, types.UnionType) and all(
            get_origin(a) is Literal for a in get_args(annotation))):
        return "string"  # a closed vocabulary in Python, an open string on the wire
    if origin is list:
        (item,) = get_args(annotation)
        return {"type": "array", "items": _avro_type(item, defined)}
    if origin is dict:
        _, value = get_args(annotation)
        return {"type": "map", "values": _avro_type(value, defined)}
    if annotation is str:
        return "string"
    if annotation is bool:
        return "boolean"
    if annotation is int:
        return "long"
    if annotation is float:
        return "double"
    if annotation is bytes:
        return "bytes"
    if annotation is Decimal:
        return "string"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        name = annotation.__name__
        if name in defined:
            return name
        defined.add(name)
        return {
            "type": "record",
            "name": name,
            "fields": [_field(n, f, defined) for n, f in annotation.model_fields.items()],
        }
    raise TypeError(f"no Avro mapping for {annotation!r}")


def _avro_default(value: Any) -> Any:
    if isinstance(value, Decimal):
        return format(quantize_money(value), "f")
    if isinstance(value, bytes):
        return value.decode("latin-1")
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    return value


def _field(name: str, info: Any, defined: set[str]) -> dict[str, Any]:
    field: dict[str, Any] = {"name": name, "type": _avro_type(info.annotation, defined)}
    if info.description:
        field["doc"] = info.description
    if info.default is not PydanticUndefined:
        field["default"] = _avro_default(info.default)
    elif info.default_factory is not None:
        field["default"] = _avro_default(info.default_factory())
    if isinstance(field["type"], list) and field.get("default", 0) is not None and "default" in field:
        # Avro requires a union's default to match its first branch.
        field["type"] = [*field["type"][1:], "null"]
    return field


def avro_schema_for(model: type[Event]) -> dict[str, Any]:
    """The Avro record schema for one event model, envelope fields first."""
    defined: set[str] = set()
    doc = (model.__doc__ or "").strip().splitlines()
    schema: dict[str, Any] = {
        "type": "record",
        "name": model.AVRO_NAME,
        "namespace": AVRO_NAMESPACE,
        "doc": f"{model.EVENT_TYPE}" + (f": {doc[0]}" if doc and model.__doc__ != Event.__doc__ else ""),
        "fields": [_field(n, f, defined) for n, f in model.model_fields.items()],
    }
    return schema


def write_schema_files() -> list[str]:
    """Regenerate `schemas/avro/*.avsc` from the models (`make schemas`)."""
    import json

    from onceflow.schemas._impl.events import EVENT_MODELS
    from onceflow.schemas._impl.registry import schema_dir

    written = []
    for model in EVENT_MODELS:
        path = schema_dir() / f"{model.EVENT_TYPE}.avsc"
        text = json.dumps(avro_schema_for(model), indent=2) + "\n"
        if not path.exists() or path.read_text() != text:
            path.write_text(text)
            written.append(path.name)
    return written


if __name__ == "__main__":
    for name in write_schema_files():
        print(f"wrote schemas/avro/{name}")
