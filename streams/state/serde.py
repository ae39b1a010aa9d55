"""Canonical JSON for state values: sorted keys, no spaces, so equal state is equal bytes.

orjson, because state is serialised on every checkpoint of every hot-path
processor; its compact sorted output is canonical in the same way.
"""

from __future__ import annotations

from typing import Any

import orjson

__all__ = ["dumps", "loads"]

_OPTIONS = orjson.OPT_SORT_KEYS


def dumps(value: Any) -> bytes:
    return orjson.dumps(value, option=_OPTIONS)


def loads(data: bytes) -> Any:
    return orjson.loads(data)
