"""Content stores: the local directory, and S3 through boto3 against moto's server."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from onceflow.schemas import ContentRef
from onceflow.settings import OnceflowSettings
from onceflow.streams.content import (
    ContentIntegrityError,
    ContentNotFoundError,
    LocalContentStore,
    S3ContentStore,
    open_content_store,
)
from onceflow.streams.types import ContentStore


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    from moto.server import ThreadedMotoServer

    from onceflow.infra.broker import free_port

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture
def s3_store(s3_endpoint: str, monkeypatch: pytest.MonkeyPatch, uid: str) -> S3ContentStore:
    import boto3

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    bucket = f"onceflow-{uid}"
    boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1").create_bucket(
        Bucket=bucket
    )
    return S3ContentStore(bucket, "payloads", endpoint_url=s3_endpoint)


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> ContentStore:
    if request.param == "local":
        return LocalContentStore(tmp_path / "content")
    return request.getfixturevalue("s3_store")  # type: ignore[no-any-return]


def test_put_get_exists(store: ContentStore) -> None:
    data = b'{"answer": 42}'
    ref = store.put(data, "application/json")
    assert ref == ContentRef(sha256=hashlib.sha256(data).hexdigest(), size=len(data),
                             media_type="application/json")
    assert store.exists(ref)
    assert store.get(ref) == data


def test_put_is_idempotent(store: ContentStore) -> None:
    assert store.put(b"same bytes") == store.put(b"same bytes")


def test_missing_content_raises(store: ContentStore) -> None:
    ref = ContentRef(sha256="0" * 64, size=1)
    assert not store.exists(ref)
    with pytest.raises(ContentNotFoundError):
        store.get(ref)


def test_local_store_detects_corruption_and_shards_by_digest(tmp_path: Path) -> None:
    store = LocalContentStore(tmp_path)
    ref = store.put(b"original")
    path = tmp_path / ref.sha256[:2] / ref.sha256[2:4] / ref.sha256
    assert path.exists()
    assert not list(path.parent.glob(".tmp-*"))  # the temp file was renamed away
    path.write_bytes(b"tampered")
    with pytest.raises(ContentIntegrityError, match="corrupt"):
        store.get(ref)


def test_s3_store_verifies_digest_on_get(s3_store: S3ContentStore) -> None:
    ref = s3_store.put(b"original")
    s3_store._s3.put_object(Bucket=s3_store.bucket, Key=s3_store._key(ref.sha256),
                            Body=b"tampered")
    with pytest.raises(ContentIntegrityError):
        s3_store.get(ref)


def test_open_from_url(tmp_path: Path) -> None:
    settings = OnceflowSettings(content_store_url=f"file://{tmp_path}/c")
    assert isinstance(open_content_store(settings), LocalContentStore)
    with pytest.raises(ValueError, match="file:///path or s3://bucket/prefix"):
        open_content_store(OnceflowSettings(content_store_url="ftp://x"))
