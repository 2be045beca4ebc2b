"""The S3 artifact store against a real S3 server (SeaweedFS on loopback, credentials checked)."""

from __future__ import annotations

import hashlib
import os
import pathlib
import socket
import threading
import time

import pytest
from servers import S3Server

from quantledger.artifacts import store as store_module
from quantledger.artifacts.store import ArtifactStore, UploadStopped
from quantledger.errors import (
    ArtifactBucketNotFound,
    ArtifactDigestMismatch,
    ArtifactStoreDenied,
    ArtifactStoreUnavailable,
    InvalidArgument,
)

pytestmark = pytest.mark.distributed


@pytest.fixture()
def aws(monkeypatch: pytest.MonkeyPatch, s3_server: S3Server) -> S3Server:
    for name, value in s3_server.env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    return s3_server


@pytest.fixture()
def store(aws: S3Server, request: pytest.FixtureRequest) -> ArtifactStore:
    return ArtifactStore.from_uri(f"s3://{aws.bucket}/store-tests/{request.node.name}")


def _file(path: pathlib.Path, size: int, seed: int = 0) -> pathlib.Path:
    path.write_bytes(hashlib.sha256(str(seed).encode()).digest() * (size // 32) + b"x" * (size % 32))
    return path


def test_a_multipart_upload_keeps_its_digest_and_a_download_verifies_it(
    store: ArtifactStore, tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(store_module, "PART_BYTES", 5 << 20)  # S3's smallest part: a 12 MB file is 3 parts
    source = _file(tmp_path / "model.gguf", 12 << 20 | 123)
    seen: list[int] = []
    stored = store.put_file("jobs/j/model.gguf", source, on_progress=seen.append)
    expected = hashlib.sha256(source.read_bytes()).hexdigest()
    assert stored.sha256 == expected and stored.size == source.stat().st_size
    assert len(seen) == 3 and sum(seen) == stored.size
    assert stored.uri.endswith("/jobs/j/model.gguf") and stored.uri.startswith("s3://")
    assert store.stat("jobs/j/model.gguf") == stored  # the digest is kept with the object
    back = store.get_file("jobs/j/model.gguf", tmp_path / "back.gguf", expected_sha256=expected)
    assert back.sha256 == expected and (tmp_path / "back.gguf").read_bytes() == source.read_bytes()
    assert store.stat("jobs/j/absent") is None


def test_a_changed_object_is_refused_and_the_destination_untouched(
    store: ArtifactStore, aws: S3Server, tmp_path: pathlib.Path
) -> None:
    source = _file(tmp_path / "out.gguf", 1 << 20)
    stored = store.put_file("jobs/j/out.gguf", source)
    key = f"{store.prefix}/jobs/j/out.gguf"
    aws.client().put_object(Bucket=aws.bucket, Key=key, Body=b"something else entirely")  # behind its back
    destination = tmp_path / "dest.gguf"
    destination.write_bytes(b"what was here before")
    with pytest.raises(ArtifactDigestMismatch) as refused:
        store.get_file("jobs/j/out.gguf", destination, expected_sha256=stored.sha256)
    assert refused.value.reason == "ARTIFACT_DIGEST_MISMATCH"
    assert destination.read_bytes() == b"what was here before"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dest.gguf", "out.gguf"]  # no partial file


def test_a_stopped_upload_leaves_no_object_and_no_multipart_upload(
    store: ArtifactStore, aws: S3Server, tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(store_module, "PART_BYTES", 5 << 20)
    source = _file(tmp_path / "big.gguf", 16 << 20)
    stop = threading.Event()
    with pytest.raises(UploadStopped):
        store.put_file("jobs/j/big.gguf", source, on_progress=lambda _n: stop.set(), stop=stop)
    assert store.list_objects("jobs/") == []
    uploads = aws.client().list_multipart_uploads(Bucket=aws.bucket, Prefix=store.prefix)
    assert not uploads.get("Uploads")


def test_a_content_addressed_tree_is_stored_once(store: ArtifactStore, tmp_path: pathlib.Path) -> None:
    files = [_file(tmp_path / "a.gguf", 4096, 1), _file(tmp_path / "b.gguf", 8192, 2)]
    entries = [(p.name, p, hashlib.sha256(p.read_bytes()).hexdigest()) for p in files]
    first = store.put_tree_if_absent("sources/root1/", entries)
    modified = {o.key: store.stat(o.key) for o in first}
    time.sleep(1.1)  # object times have one-second resolution
    again = store.put_tree_if_absent("sources/root1/", entries)
    assert [o.sha256 for o in again] == [e[2] for e in entries]
    listed = {o.key for o in store.list_objects("sources/root1/")}
    assert listed == {"sources/root1/a.gguf", "sources/root1/b.gguf", "sources/root1/.complete.json"}
    assert {o.key: store.stat(o.key) for o in again} == modified


def test_wrong_credentials_are_denied(aws: S3Server, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    with pytest.raises(ArtifactStoreDenied) as denied:
        ArtifactStore.from_uri(f"s3://{aws.bucket}/x").check()
    assert denied.value.code == "PERMISSION_DENIED"


def test_credentials_come_from_the_shared_files_and_a_profile(
    aws: S3Server, monkeypatch: pytest.MonkeyPatch, tmp_path: pathlib.Path
) -> None:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(name)
    credentials = tmp_path / "credentials"
    credentials.write_text(
        f"[default]\naws_access_key_id = nobody\naws_secret_access_key = nothing\n\n"
        f"[builds]\naws_access_key_id = {aws.access_key}\naws_secret_access_key = {aws.secret_key}\n"
    )
    (tmp_path / "config").write_text("[profile builds]\nregion = us-east-1\n")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(credentials))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "config"))
    with pytest.raises(ArtifactStoreDenied):
        ArtifactStore.from_uri(f"s3://{aws.bucket}/x").check()  # the default profile's keys are wrong
    monkeypatch.setenv("AWS_PROFILE", "builds")
    ArtifactStore.from_uri(f"s3://{aws.bucket}/x").check()


def test_a_store_nobody_answers_is_unavailable(aws: S3Server, monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # closed again: nothing listens there
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", f"http://127.0.0.1:{port}")
    with pytest.raises(ArtifactStoreUnavailable) as unavailable:
        ArtifactStore.from_uri(f"s3://{aws.bucket}/x").check()
    assert unavailable.value.code == "UNAVAILABLE"


def test_a_missing_bucket_and_a_bad_uri_are_named(aws: S3Server) -> None:
    with pytest.raises(ArtifactBucketNotFound) as missing:
        ArtifactStore.from_uri("s3://no-such-bucket-here/x").check()
    assert "no-such-bucket-here" in missing.value.message
    for bad in ("/data/artifacts", "s3://ab/x", "gs://bucket/x"):
        with pytest.raises(InvalidArgument):
            ArtifactStore.from_uri(bad)


def test_deleting_a_prefix_frees_its_bytes(store: ArtifactStore, tmp_path: pathlib.Path) -> None:
    store.put_file("jobs/k/one.gguf", _file(tmp_path / "one", 3000))
    store.put_bytes("jobs/k/one.gguf.provenance.json", b"{}")
    store.put_bytes("jobs/other/keep.json", b"{}")
    assert store.delete_prefix("jobs/k/") == 3002
    assert [o.key for o in store.list_objects("jobs/")] == ["jobs/other/keep.json"]
    assert os.path.exists(tmp_path / "one")
