"""S3 (or any S3 API) through boto3: conditional put, digest verified on get."""

from __future__ import annotations

from typing import Any

from onceflow.schemas import ContentRef
from onceflow.streams.content.store import ContentNotFoundError, content_ref_for, verify

__all__ = ["S3ContentStore"]


class S3ContentStore:
    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        endpoint_url: str | None = None,
        region_name: str | None = None,
        client: Any = None,
    ) -> None:
        import boto3

        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self._s3 = client or boto3.client(
            "s3", endpoint_url=endpoint_url, region_name=region_name or "us-east-1"
        )

    def _key(self, sha256: str) -> str:
        key = f"sha256/{sha256[:2]}/{sha256}"
        return f"{self.prefix}/{key}" if self.prefix else key

    def put(self, data: bytes, media_type: str = "application/octet-stream") -> ContentRef:
        from botocore.exceptions import ClientError

        ref = content_ref_for(data, media_type)
        try:
            # If-None-Match makes the write conditional: an existing object (the
            # same bytes, by construction) is never rewritten.
            self._s3.put_object(
                Bucket=self.bucket, Key=self._key(ref.sha256), Body=data,
                ContentType=media_type, IfNoneMatch="*",
                Metadata={"sha256": ref.sha256},
            )
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if code not in ("PreconditionFailed", "ConditionalRequestConflict") and status != 412:
                raise
        return ref

    def get(self, ref: ContentRef) -> bytes:
        from botocore.exceptions import ClientError

        try:
            obj = self._s3.get_object(Bucket=self.bucket, Key=self._key(ref.sha256))
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                raise ContentNotFoundError(ref.sha256) from None
            raise
        return verify(ref, obj["Body"].read())

    def exists(self, ref: ContentRef) -> bool:
        from botocore.exceptions import ClientError

        try:
            self._s3.head_object(Bucket=self.bucket, Key=self._key(ref.sha256))
            return True
        except ClientError as exc:
            if exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") == 404:
                return False
            raise
