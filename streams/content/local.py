"""The embedded default: a directory, sharded by digest, written atomically."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from onceflow.schemas import ContentRef
from onceflow.streams.content.store import ContentNotFoundError, content_ref_for, verify

__all__ = ["LocalContentStore"]


class LocalContentStore:
    def __init__(self, root: str | Path, *, fsync: bool = True) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.fsync = fsync

    def _path(self, sha256: str) -> Path:
        return self.root / sha256[:2] / sha256[2:4] / sha256

    def put(self, data: bytes, media_type: str = "application/octet-stream") -> ContentRef:
        ref = content_ref_for(data, media_type)
        path = self._path(ref.sha256)
        if path.exists():
            return ref  # same bytes, same key: the write is idempotent
        path.parent.mkdir(parents=True, exist_ok=True)
        # Temp file (+ fsync) + rename: a reader sees all the bytes or none.
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                if self.fsync:
                    os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return ref

    def get(self, ref: ContentRef) -> bytes:
        try:
            data = self._path(ref.sha256).read_bytes()
        except FileNotFoundError:
            raise ContentNotFoundError(ref.sha256) from None
        return verify(ref, data)

    def exists(self, ref: ContentRef) -> bool:
        return self._path(ref.sha256).exists()
