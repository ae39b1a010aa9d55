"""The faust shell: faust-streaming for low-rate windowed roles and users' own agents.

`streams.faust` gives users faust records and a codec for every onceflow
event type, an app factory with the broker settings already right, and
`attach_reducer` to run a `Reducer` as a faust agent over a RocksDB table.
"""

from onceflow.streams.faust.app import make_app
from onceflow.streams.faust.codec import CODEC_NAME, OnceflowAvroCodec, register_codec
from onceflow.streams.faust.records import RECORDS, record_for, to_event, to_record
from onceflow.streams.faust.shell import TableState, attach_reducer

__all__ = [
    "CODEC_NAME",
    "RECORDS",
    "OnceflowAvroCodec",
    "TableState",
    "attach_reducer",
    "make_app",
    "record_for",
    "register_codec",
    "to_event",
    "to_record",
]
