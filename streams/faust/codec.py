"""A faust codec for onceflow topics: Avro single-object bytes <-> faust records.

Register once (importing `streams.faust` does it) and use
`value_serializer="onceflow-avro"` on a topic.
"""

from __future__ import annotations

from typing import Any

import faust
from faust.serializers import codecs

from onceflow.schemas import Event, EventCodec, SingleObjectCodec
from onceflow.streams.faust.records import to_event, to_record

__all__ = ["CODEC_NAME", "OnceflowAvroCodec", "register_codec"]

CODEC_NAME = "onceflow-avro"


class OnceflowAvroCodec(codecs.Codec):
    def __init__(self, event_codec: EventCodec | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._codec = event_codec or SingleObjectCodec()

    def _loads(self, s: bytes) -> Any:
        return to_record(self._codec.decode(s))

    def _dumps(self, obj: Any) -> bytes:
        if isinstance(obj, Event):
            return self._codec.encode(obj)
        if isinstance(obj, faust.Record | dict):
            return self._codec.encode(to_event(obj))
        raise TypeError(f"cannot encode {type(obj).__name__} as an onceflow event")


def register_codec(event_codec: EventCodec | None = None) -> None:
    codecs.register(CODEC_NAME, OnceflowAvroCodec(event_codec))


register_codec()
