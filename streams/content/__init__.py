"""The content-addressed store for payloads that do not belong in the log."""

from onceflow.streams.content.local import LocalContentStore
from onceflow.streams.content.s3 import S3ContentStore
from onceflow.streams.content.store import (
    ContentIntegrityError,
    ContentNotFoundError,
    content_ref_for,
    open_content_store,
)

__all__ = [
    "ContentIntegrityError",
    "ContentNotFoundError",
    "LocalContentStore",
    "S3ContentStore",
    "content_ref_for",
    "open_content_store",
]
