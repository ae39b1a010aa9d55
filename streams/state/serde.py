"""Canonical JSON for state values: sorted keys, no spaces, so equal state is equal bytes."""

from __future__ import annotations

import json
from typing import Any

__all__ = ["dumps", "loads"]

_encoder = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def dumps(value: Any) -> bytes:
    return _encoder.encode(value).encode()


def loads(data: bytes) -> Any:
    return json.loads(data)
