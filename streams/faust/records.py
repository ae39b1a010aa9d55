"""faust records for every onceflow event type, derived from the pydantic models.

Records mirror the models field for field; nested refs are plain dicts and
money is a 6-decimal string, as on the wire. Convert with `to_record` and
`to_event` (the latter validates, so a record that breaks the contract
cannot be sent).
"""

from __future__ import annotations

import types
import typing
from decimal import Decimal
from typing import Any, Literal, Optional, Union, get_args, get_origin

import faust
from pydantic import BaseModel

from onceflow.schemas import EVENT_MODELS, Event, default_registry

__all__ = ["RECORDS", "record_for", "to_event", "to_record"]


def _record_type(annotation: Any) -> Any:
    while get_origin(annotation) is typing.Annotated:
        annotation = get_args(annotation)[0]
    origin = get_origin(annotation)
    if origin in (Union, types.UnionType):
        inner = [a for a in get_args(annotation) if a is not type(None)]
        return Optional[_record_type(inner[0])]  # noqa: UP045 - faust reads typing.Optional
    if origin is Literal or annotation is Decimal:
        return str
    if origin is list:
        return list
    if origin is dict:
        return dict
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return dict
    return annotation


def _make_record(model: type[Event]) -> type[faust.Record]:
    annotations: dict[str, Any] = {}
    defaults: dict[str, Any] = {}
    required: list[str] = []
    for name, info in model.model_fields.items():
        annotations[name] = _record_type(info.annotation)
        if info.is_required():
            required.append(name)
        else:
            default = info.get_default(call_default_factory=True)
            if isinstance(default, Decimal):
                default = format(default, "f")
            elif isinstance(default, BaseModel):
                default = default.model_dump()
            defaults[name] = default
    # faust, like dataclasses, wants fields without defaults first.
    ordered = {n: annotations[n] for n in required}
    ordered.update({n: annotations[n] for n in annotations if n not in ordered})
    namespace: dict[str, Any] = {"__annotations__": ordered, **defaults}
    return typing.cast(
        "type[faust.Record]",
        types.new_class(
            f"{model.__name__}Record",
            (faust.Record,),
            {"serializer": "json", "namespace": f"onceflow.{model.EVENT_TYPE}"},
            lambda ns: ns.update(namespace),
        ),
    )


RECORDS: dict[str, type[faust.Record]] = {m.EVENT_TYPE: _make_record(m) for m in EVENT_MODELS}


def record_for(event_type: str) -> type[faust.Record]:
    return RECORDS[event_type]


def to_record(event: Event) -> faust.Record:
    record_cls = RECORDS.get(event.event_type)
    if record_cls is None:
        raise KeyError(f"no faust record for {event.event_type!r}")
    return record_cls(**event.model_dump())


def to_event(record: faust.Record | dict[str, Any]) -> Event:
    data = record.asdict() if isinstance(record, faust.Record) else dict(record)
    entry = default_registry().for_type(str(data["event_type"]))
    if entry.model is None:
        raise KeyError(f"no model for {data['event_type']!r}")
    return entry.model.model_validate(data)
