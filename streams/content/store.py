"""What both content stores share: refs, errors and opening one from a URL."""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING
from urllib.parse import urlparse

from onceflow.schemas import ContentRef
from onceflow.streams.types import ContentStore

if TYPE_CHECKING:
    from onceflow.streams.settings import StreamsSettings

__all__ = [
    "ContentIntegrityError",
    "ContentNotFoundError",
    "content_ref_for",
    "open_content_store",
]


class ContentNotFoundError(KeyError):
    """No bytes are stored under this digest."""


class ContentIntegrityError(ValueError):
    """The stored bytes do not hash to the digest they are stored under."""


def content_ref_for(data: bytes, media_type: str = "application/octet-stream") -> ContentRef:
    return ContentRef(sha256=hashlib.sha256(data).hexdigest(), size=len(data),
                      media_type=media_type)


def verify(ref: ContentRef, data: bytes) -> bytes:
    digest = hashlib.sha256(data).hexdigest()
    if digest != ref.sha256 or len(data) != ref.size:
        raise ContentIntegrityError(
            f"content {ref.sha256} is corrupt: stored bytes hash to {digest} ({len(data)} bytes, "
            f"expected {ref.size})"
        )
    return data


def open_content_store(settings: StreamsSettings) -> ContentStore:
    """`file:///path` (or `file://relative`) or `s3://bucket/prefix`."""
    url = settings.content_store_url
    parsed = urlparse(url)
    if parsed.scheme == "file":
        from onceflow.streams.content.local import LocalContentStore

        fsync = settings.content_store_fsync
        if fsync is None:
            fsync = settings.broker_profile != "embedded"
        return LocalContentStore(parsed.netloc + parsed.path, fsync=fsync)
    if parsed.scheme == "s3":
        from onceflow.streams.content.s3 import S3ContentStore

        if not parsed.netloc:
            raise ValueError(f"content store URL {url!r} names no bucket: use s3://bucket/prefix")
        return S3ContentStore(
            parsed.netloc, parsed.path.strip("/"), endpoint_url=settings.s3_endpoint_url,
            region_name=settings.s3_region,
        )
    raise ValueError(
        f"content store URL {url!r} is not supported: use file:///path or s3://bucket/prefix"
    )
