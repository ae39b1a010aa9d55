"""A faust app with onceflow's broker settings (embedded or cluster) already applied."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import faust

if TYPE_CHECKING:
    from onceflow.streams.settings import StreamsSettings


__all__ = ["make_app"]


def make_app(app_id: str, settings: StreamsSettings, **options: Any) -> faust.App:
    """`at_least_once` only: faust's exactly_once has known duplicate bugs, and
    correctness must not depend on broker transactions (a cluster may not offer
    them); dedupe state makes redelivery harmless."""
    datadir = Path(settings.state_dir) / "faust" / app_id
    datadir.parent.mkdir(parents=True, exist_ok=True)
    kwargs: dict[str, Any] = {
        **settings.faust_broker_settings(),
        "store": "rocksdb://",
        "datadir": str(datadir),
        "web_enabled": False,
        "table_standby_replicas": 0,
        "consumer_auto_offset_reset": "earliest",
        "topic_allow_declare": True,
    }
    kwargs.update(options)
    if kwargs.get("processing_guarantee") not in (None, "at_least_once"):
        raise ValueError("onceflow's faust shell runs at_least_once only")
    return faust.App(app_id, **kwargs)
