"""An S3-compatible artifact store: streamed multipart uploads hashed on the way, verified downloads.

Every object lives under the store's prefix (``s3://BUCKET/PREFIX/<key>``). Keys (docs/SCALE_OUT.md
"Artifacts in S3"): ``sources/<root digest>/…`` (a source's files, stored once whatever the number of jobs),
``inputs/<sha256>/…`` (imatrix files, evaluation texts, LoRA adapters), ``cache/<sha256>.gguf`` (converted
intermediates), ``jobs/<job id>/…`` (outputs and their provenance JSON), ``keys/…``.

- Uploads read the file once: each part is hashed in order and sent while the next is read (up to
  ``concurrency`` parts in flight). A failed or stopped upload is aborted, so no partial object ever
  becomes visible. The SHA-256 is kept with the object as its ``sha256`` tag (S3 metadata is fixed
  when an upload begins, before the digest is known), so ``stat`` returns it.
- Downloads stream into a partial file beside the destination, hashed on the way; a digest that differs
  from the one expected is ARTIFACT_DIGEST_MISMATCH, the partial file removed, the destination untouched.
- Credentials come only from the standard AWS chain (environment, shared credentials and config files,
  profiles, instance roles); the endpoint from ``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL`` (botocore
  reads them) for stores other than AWS. Errors are typed: ARTIFACT_STORE_UNAVAILABLE (no answer; connects
  time out after ``CONNECT_SECONDS``, ``ATTEMPTS`` tries), ARTIFACT_STORE_DENIED (credentials refused),
  ARTIFACT_BUCKET_NOT_FOUND.

boto3 is the client: its botocore core is the reference S3 implementation (signing, retries, every
credential source), and the part pipeline here keeps one read of the file; docs/SCALE_OUT.md has the
throughput it reaches against ``cp`` + ``openssl dgst``.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import hashlib
import json
import os
import pathlib
import threading
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import boto3
import botocore.config
import botocore.exceptions

from quantledger.errors import (
    ArtifactBucketNotFound,
    ArtifactDigestMismatch,
    ArtifactStoreDenied,
    ArtifactStoreUnavailable,
    InvalidArgument,
    quote_client,
)

PART_BYTES = 32 << 20
CONCURRENCY = 4
READ_CHUNK = 8 << 20
CONNECT_SECONDS = 5
READ_SECONDS = 120
ATTEMPTS = 3
TREE_MARKER = ".complete.json"  # written last under a content-addressed prefix: the tree is whole
DENIED = {"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken", "ExpiredToken", "403"}
MISSING_BUCKET = {"NoSuchBucket"}
MISSING_KEY = {"NoSuchKey", "404", "NotFound"}

Progress = Callable[[int], None]


@dataclass(frozen=True)
class StoredObject:
    """An object of the store: its key (under the prefix), its ``s3://`` URI, size and SHA-256."""

    key: str
    uri: str
    size: int
    sha256: str


class UploadStopped(Exception):
    """``stop`` was set while an upload or a download ran; nothing was left behind."""


def parse_uri(uri: str) -> tuple[str, str]:
    """``s3://BUCKET/PREFIX`` as (bucket, prefix without slashes at its ends)."""
    if not uri.startswith("s3://"):
        raise InvalidArgument(f"the artifact store must be an s3://BUCKET/PREFIX URI, got {quote_client(uri)}")
    bucket, _, prefix = uri[len("s3://") :].partition("/")
    if not (3 <= len(bucket) <= 63) or not all(c.isalnum() or c in "-." for c in bucket):
        raise InvalidArgument(f"{quote_client(bucket)} is not an S3 bucket name (3 to 63 letters, digits, - and .)")
    return bucket, prefix.strip("/")


class ArtifactStore:
    """One bucket and prefix; safe to use from many threads at once."""

    def __init__(self, bucket: str, prefix: str, client: Any, *, endpoint: str = "") -> None:
        self.bucket = bucket
        self.prefix = prefix
        self._client = client
        self._endpoint = endpoint

    @classmethod
    def from_uri(cls, uri: str, *, profile: str | None = None) -> ArtifactStore:
        """The store at ``s3://BUCKET/PREFIX`` with the standard AWS credential chain."""
        bucket, prefix = parse_uri(uri)
        session = boto3.session.Session(profile_name=profile or os.environ.get("AWS_PROFILE") or None)
        config = botocore.config.Config(
            connect_timeout=CONNECT_SECONDS,
            read_timeout=READ_SECONDS,
            retries={"max_attempts": ATTEMPTS, "mode": "standard"},
            max_pool_connections=4 * CONCURRENCY,
            s3={"addressing_style": "path"},
        )
        region = session.region_name or "us-east-1"
        client = session.client("s3", region_name=region, config=config)
        return cls(bucket, prefix, client, endpoint=str(client.meta.endpoint_url))

    # ---------------------------------------------------------------- names

    def _full(self, key: str) -> str:
        key = key.lstrip("/")
        return f"{self.prefix}/{key}" if self.prefix else key

    def uri_for(self, key: str) -> str:
        return f"s3://{self.bucket}/{self._full(key)}"

    def key_of(self, uri: str) -> str:
        """The key of one of this store's ``s3://`` URIs (INVALID_ARGUMENT for another bucket or prefix)."""
        base = self.uri_for("")
        if not uri.startswith(base):
            raise InvalidArgument(f"{quote_client(uri)} is not in the artifact store {base}")
        return uri[len(base) :]

    # ---------------------------------------------------------------- errors

    @contextlib.contextmanager
    def _reaching(self, what: str) -> Iterator[None]:
        try:
            yield
        except botocore.exceptions.ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if code in DENIED:
                raise ArtifactStoreDenied(
                    f"the artifact store {self.uri_for('')} refused the credentials ({code}) while {what}; "
                    "check AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE or ~/.aws/credentials",
                    code=code,
                ) from None
            if code in MISSING_BUCKET:
                raise ArtifactBucketNotFound(
                    f"the bucket {self.bucket} does not exist at {self._endpoint} ({what}); create it first",
                    bucket=self.bucket,
                ) from None
            raise ArtifactStoreUnavailable(
                f"the artifact store {self.uri_for('')} failed while {what}: {code or exc}", code=code
            ) from None
        except (botocore.exceptions.BotoCoreError, OSError) as exc:
            if isinstance(exc, botocore.exceptions.NoCredentialsError):
                raise ArtifactStoreDenied(
                    f"no AWS credentials for the artifact store {self.uri_for('')} (environment, AWS_PROFILE, "
                    "~/.aws/credentials)"
                ) from None
            raise ArtifactStoreUnavailable(
                f"the artifact store at {self._endpoint} did not answer while {what}: {exc}",
                endpoint=self._endpoint,
            ) from None

    # ---------------------------------------------------------------- whole store

    def check(self) -> None:
        """The bucket answers, exists and takes writes under the prefix (a tiny object, then deleted)."""
        probe = f".probe/{uuid.uuid4().hex}"
        with self._reaching("checking the bucket"):
            try:
                self._client.head_bucket(Bucket=self.bucket)
            except botocore.exceptions.ClientError as exc:
                if str(exc.response.get("Error", {}).get("Code", "")) in MISSING_KEY | MISSING_BUCKET:
                    raise ArtifactBucketNotFound(
                        f"the bucket {self.bucket} does not exist at {self._endpoint}; create it first",
                        bucket=self.bucket,
                    ) from None
                raise
            self._client.put_object(Bucket=self.bucket, Key=self._full(probe), Body=b"")
            self._client.delete_object(Bucket=self.bucket, Key=self._full(probe))

    # ---------------------------------------------------------------- small objects

    def put_bytes(self, key: str, data: bytes) -> StoredObject:
        digest = hashlib.sha256(data).hexdigest()
        with self._reaching(f"writing {key}"):
            self._client.put_object(
                Bucket=self.bucket,
                Key=self._full(key),
                Body=data,
                Metadata={"sha256": digest},
                Tagging=f"sha256={digest}",
            )
        return StoredObject(key, self.uri_for(key), len(data), digest)

    def get_bytes(self, key: str, max_bytes: int) -> bytes:
        """The object's bytes; INVALID_ARGUMENT when it holds more than ``max_bytes``."""
        with self._reaching(f"reading {key}"):
            answer = self._client.get_object(Bucket=self.bucket, Key=self._full(key))
            if int(answer["ContentLength"]) > max_bytes:
                answer["Body"].close()
                raise InvalidArgument(
                    f"{self.uri_for(key)} holds {answer['ContentLength']} bytes, more than {max_bytes}"
                )
            data: bytes = answer["Body"].read()
        return data

    # ---------------------------------------------------------------- metadata

    def stat(self, key: str) -> StoredObject | None:
        """The object at ``key`` (its SHA-256 from its tag; "" if it has none), or None."""
        with self._reaching(f"looking up {key}"):
            try:
                head = self._client.head_object(Bucket=self.bucket, Key=self._full(key))
            except botocore.exceptions.ClientError as exc:
                if str(exc.response.get("Error", {}).get("Code", "")) in MISSING_KEY:
                    return None
                raise
            digest = (head.get("Metadata") or {}).get("sha256", "")
            if not digest:
                tags = self._client.get_object_tagging(Bucket=self.bucket, Key=self._full(key))
                digest = next((t["Value"] for t in tags.get("TagSet", []) if t["Key"] == "sha256"), "")
        return StoredObject(key, self.uri_for(key), int(head["ContentLength"]), digest)

    def list_objects(self, prefix: str) -> list[StoredObject]:
        """Objects under ``prefix`` (sizes; digests are not looked up)."""
        found = []
        with self._reaching(f"listing {prefix}"):
            pages = self._client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=self._full(prefix)
            )
            for page in pages:
                for item in page.get("Contents", []):
                    key = item["Key"][len(self._full("")) :]
                    found.append(StoredObject(key, self.uri_for(key), int(item["Size"]), ""))
        return found

    def delete_prefix(self, prefix: str) -> int:
        """Delete every object under ``prefix`` (and abort its unfinished uploads); the bytes freed."""
        objects = self.list_objects(prefix)
        with self._reaching(f"deleting {prefix}"):
            for start in range(0, len(objects), 1000):
                batch = [{"Key": self._full(o.key)} for o in objects[start : start + 1000]]
                self._client.delete_objects(Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True})
            uploads = self._client.list_multipart_uploads(Bucket=self.bucket, Prefix=self._full(prefix))
            for upload in uploads.get("Uploads", []):
                self._client.abort_multipart_upload(Bucket=self.bucket, Key=upload["Key"], UploadId=upload["UploadId"])
        return sum(o.size for o in objects)

    # ---------------------------------------------------------------- files

    def put_file(
        self, key: str, path: pathlib.Path, *, on_progress: Progress | None = None, stop: threading.Event | None = None
    ) -> StoredObject:
        """Upload ``path`` to ``key`` in parts, hashing while the bytes flow; aborted (nothing visible) on
        any failure or when ``stop`` is set (UploadStopped)."""
        full = self._full(key)
        digest = hashlib.sha256()
        size = 0
        with self._reaching(f"uploading {key}"):
            upload = self._client.create_multipart_upload(Bucket=self.bucket, Key=full)
            upload_id = upload["UploadId"]
            try:
                parts = self._send_parts(full, upload_id, path, digest, on_progress, stop)
                size = sum(p[1] for p in parts)
                if stop is not None and stop.is_set():
                    raise UploadStopped(key)
                self._client.complete_multipart_upload(
                    Bucket=self.bucket,
                    Key=full,
                    UploadId=upload_id,
                    MultipartUpload={"Parts": [{"PartNumber": n, "ETag": etag} for n, _, etag in parts]},
                )
            except BaseException:
                with contextlib.suppress(Exception):
                    self._client.abort_multipart_upload(Bucket=self.bucket, Key=full, UploadId=upload_id)
                raise
            hexdigest = digest.hexdigest()
            self._client.put_object_tagging(
                Bucket=self.bucket, Key=full, Tagging={"TagSet": [{"Key": "sha256", "Value": hexdigest}]}
            )
        return StoredObject(key, self.uri_for(key), size, hexdigest)

    def _send_parts(
        self,
        full: str,
        upload_id: str,
        path: pathlib.Path,
        digest: Any,
        on_progress: Progress | None,
        stop: threading.Event | None,
    ) -> list[tuple[int, int, str]]:
        """Read ``path`` in order (hashing it) and send its parts, ``CONCURRENCY`` at most in flight."""
        sent: list[tuple[int, int, str]] = []
        pending: dict[concurrent.futures.Future[str], tuple[int, int]] = {}
        with open(path, "rb") as source, concurrent.futures.ThreadPoolExecutor(CONCURRENCY) as pool:
            number = 0
            while True:
                if stop is not None and stop.is_set():
                    raise UploadStopped(full)
                chunk = source.read(PART_BYTES)
                if not chunk and number > 0:
                    break
                number += 1
                digest.update(chunk)
                future = pool.submit(self._send_part, full, upload_id, number, chunk)
                pending[future] = (number, len(chunk))
                if len(pending) >= CONCURRENCY:
                    self._collect(pending, sent, on_progress, wait_all=False)
                if len(chunk) < PART_BYTES:
                    break
            self._collect(pending, sent, on_progress, wait_all=True)
        return sorted(sent)

    def _send_part(self, full: str, upload_id: str, number: int, chunk: bytes) -> str:
        answer = self._client.upload_part(
            Bucket=self.bucket, Key=full, UploadId=upload_id, PartNumber=number, Body=chunk
        )
        return str(answer["ETag"])

    @staticmethod
    def _collect(
        pending: dict[concurrent.futures.Future[str], tuple[int, int]],
        sent: list[tuple[int, int, str]],
        on_progress: Progress | None,
        *,
        wait_all: bool,
    ) -> None:
        mode = concurrent.futures.ALL_COMPLETED if wait_all else concurrent.futures.FIRST_COMPLETED
        done, _ = concurrent.futures.wait(pending, return_when=mode)
        for future in done:
            number, size = pending.pop(future)
            sent.append((number, size, future.result()))
            if on_progress is not None:
                on_progress(size)

    def get_file(
        self,
        key: str,
        dest: pathlib.Path,
        *,
        expected_sha256: str | None,
        on_progress: Progress | None = None,
        stop: threading.Event | None = None,
    ) -> StoredObject:
        """Download ``key`` to ``dest`` through a partial file, hashed on the way; ARTIFACT_DIGEST_MISMATCH
        (the partial file removed, ``dest`` untouched) when the bytes are not those expected (None: any
        bytes, their digest returned)."""
        partial = dest.with_name(f".{dest.name}.{uuid.uuid4().hex[:8]}.download")
        digest = hashlib.sha256()
        size = 0
        try:
            with self._reaching(f"downloading {key}"), open(partial, "wb") as sink:
                body = self._client.get_object(Bucket=self.bucket, Key=self._full(key))["Body"]
                try:
                    for chunk in body.iter_chunks(READ_CHUNK):
                        if stop is not None and stop.is_set():
                            raise UploadStopped(key)
                        digest.update(chunk)
                        sink.write(chunk)
                        size += len(chunk)
                        if on_progress is not None:
                            on_progress(len(chunk))
                finally:
                    body.close()
            if expected_sha256 is not None and digest.hexdigest() != expected_sha256:
                raise ArtifactDigestMismatch(
                    f"{self.uri_for(key)} has SHA-256 {digest.hexdigest()}, not the {expected_sha256} recorded for it; "
                    "the object was changed or damaged in the store",
                    key=key,
                    expected=expected_sha256,
                    actual=digest.hexdigest(),
                )
            os.replace(partial, dest)
        finally:
            partial.unlink(missing_ok=True)
        return StoredObject(key, self.uri_for(key), size, digest.hexdigest())

    # ---------------------------------------------------------------- content-addressed trees

    def put_tree_if_absent(self, prefix: str, files: Sequence[tuple[str, pathlib.Path, str]]) -> list[StoredObject]:
        """Store ``files`` (relative name, local path, SHA-256) under ``prefix`` once: a prefix whose marker
        (written last, listing every file and digest) matches is taken as it is, nothing uploaded."""
        prefix = prefix.rstrip("/") + "/"
        wanted = {name: digest for name, _, digest in files}
        marker = self._marker(prefix)
        if marker is not None and marker == wanted:
            sizes = {name: path.stat().st_size for name, path, _ in files}
            return [StoredObject(prefix + n, self.uri_for(prefix + n), sizes[n], d) for n, _, d in files]
        stored = []
        for name, path, digest in files:
            made = self.put_file(prefix + name, path)
            if made.sha256 != digest:
                self.delete_prefix(prefix + name)
                raise ArtifactDigestMismatch(
                    f"{path} changed while it was stored (SHA-256 {made.sha256}, expected {digest})",
                    key=prefix + name,
                )
            stored.append(made)
        self.put_bytes(prefix + TREE_MARKER, json.dumps(wanted, sort_keys=True).encode())
        return stored

    def _marker(self, prefix: str) -> dict[str, str] | None:
        if self.stat(prefix + TREE_MARKER) is None:
            return None
        try:
            found = json.loads(self.get_bytes(prefix + TREE_MARKER, 16 << 20))
        except ValueError:
            return None
        return found if isinstance(found, dict) else None
