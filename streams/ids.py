"""Deterministic event ids: the same cause and role always give the same id."""

from __future__ import annotations

import hashlib

__all__ = ["derive_event_id"]


def derive_event_id(causation_id: str, role: str) -> str:
    """A hash of the causing event id and the output's role (32 hex chars).

    Re-deciding the same input after a crash therefore produces events with
    the same ids, which is what lets every consumer dedupe them.
    """
    return hashlib.sha256(f"{causation_id}\x1f{role}".encode()).hexdigest()[:32]
