"""A server's TLS key material, read from the operator's PEM files and reloaded when they change.

:class:`CertificateFiles` names the files (``--tls-cert``, ``--tls-key``, optional ``--tls-client-ca``).
:func:`load_key_material` reads and checks them: PEM certificates, a private key that matches the
leaf certificate (checked by OpenSSL through :mod:`ssl`), a client CA that parses. A failure is
:class:`~quantledger.errors.CertificateInvalid` naming the flag.

:class:`CertificateWatch` decides when to reload. ``changed()`` is cheap (one ``stat`` per file: the
mtime, size and inode) and is asked on every new connection; only when a file's ``stat`` moved are
the files read again, and new material is taken only when its SHA-256 differs from the current one.
``reload()`` (SIGHUP) reads them at once whatever their ``stat`` says. New material that fails the
checks is refused: the current material stays in use and the reason is logged (once per version of
the files).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import pathlib
import ssl
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass

from quantledger.errors import CertificateInvalid

log = logging.getLogger(__name__)

PEM_CERTIFICATE = b"-----BEGIN CERTIFICATE-----"
MAX_PEM_BYTES = 1 << 20  # a certificate chain or key file is a few KiB


@dataclass(frozen=True)
class CertificateFiles:
    """Where a server's certificate chain, its key and (for mutual TLS) the client CA live."""

    cert: pathlib.Path
    key: pathlib.Path
    client_ca: pathlib.Path | None = None

    def named(self) -> list[tuple[str, pathlib.Path]]:
        """(flag, path) of every file."""
        files = [("--tls-cert", self.cert), ("--tls-key", self.key)]
        if self.client_ca is not None:
            files.append(("--tls-client-ca", self.client_ca))
        return files


@dataclass(frozen=True)
class KeyMaterial:
    """The checked contents of the files."""

    cert_chain: bytes
    private_key: bytes
    client_ca: bytes | None
    fingerprint: str  # SHA-256 of the leaf certificate (DER), as `openssl x509 -fingerprint -sha256` shows it
    digest: str  # SHA-256 over every file's bytes: whether a reload brought anything new

    def describe(self) -> str:
        return f"certificate sha256 {self.fingerprint}"


def read_pem(flag: str, path: str | os.PathLike[str]) -> bytes:
    """The bytes of a PEM file given by ``flag`` (CertificateInvalid naming both when it cannot be one)."""
    try:
        with open(path, "rb") as file:
            data = file.read(MAX_PEM_BYTES + 1)
    except OSError as exc:
        raise CertificateInvalid(f"{flag} {path}: cannot read it ({exc.strerror or exc})") from exc
    if len(data) > MAX_PEM_BYTES:
        raise CertificateInvalid(f"{flag} {path}: larger than {MAX_PEM_BYTES} bytes; expected a PEM file")
    if b"-----BEGIN " not in data:
        raise CertificateInvalid(f"{flag} {path}: not a PEM file (no -----BEGIN line)")
    return data


def _leaf_fingerprint(flag: str, path: pathlib.Path, chain: bytes) -> str:
    start = chain.find(PEM_CERTIFICATE)
    end = chain.find(b"-----END CERTIFICATE-----", start)
    if start < 0 or end < 0:
        raise CertificateInvalid(f"{flag} {path}: no PEM certificate (-----BEGIN CERTIFICATE-----) in it")
    try:
        der = ssl.PEM_cert_to_DER_cert(chain[start : end + 25].decode("ascii"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise CertificateInvalid(f"{flag} {path}: the first certificate is not valid PEM") from exc
    return hashlib.sha256(der).hexdigest()


@contextlib.contextmanager
def _as_file(data: bytes) -> Iterator[str]:
    """A path that reads ``data``: an anonymous memory file where the system has them, so the key
    never lands on a disk; else a private temporary file."""
    if hasattr(os, "memfd_create"):
        fd = os.memfd_create("quantledger-tls", os.MFD_CLOEXEC)
        try:
            os.write(fd, data)
            yield f"/proc/self/fd/{fd}"
        finally:
            os.close(fd)
        return
    with tempfile.TemporaryDirectory() as folder:  # mode 0700
        path = os.path.join(folder, "pem")
        with open(path, "wb") as file:
            file.write(data)
        yield path


def _no_password() -> bytes:
    raise CertificateInvalid("the key is encrypted: give an unencrypted PEM key (protect it by file mode 0600)")


def load_key_material(files: CertificateFiles) -> KeyMaterial:
    """Read and check the files (CertificateInvalid naming the flag and the reason)."""
    chain = read_pem("--tls-cert", files.cert)
    key = read_pem("--tls-key", files.key)
    fingerprint = _leaf_fingerprint("--tls-cert", files.cert, chain)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    with _as_file(chain) as chain_path, _as_file(key) as key_path:
        try:
            context.load_cert_chain(chain_path, key_path, password=_no_password)
        except CertificateInvalid as exc:
            raise CertificateInvalid(f"--tls-key {files.key}: {exc.message}") from None
        except ssl.SSLError as exc:
            raise CertificateInvalid(
                f"--tls-cert {files.cert} / --tls-key {files.key}: OpenSSL refuses them ({exc.reason or exc}); "
                "is the key the certificate's?"
            ) from exc
    client_ca = None
    if files.client_ca is not None:
        client_ca = read_pem("--tls-client-ca", files.client_ca)
        if PEM_CERTIFICATE not in client_ca:
            raise CertificateInvalid(f"--tls-client-ca {files.client_ca}: no PEM certificate in it")
        try:
            context.load_verify_locations(cadata=client_ca.decode("ascii"))
        except (ssl.SSLError, UnicodeDecodeError, ValueError) as exc:
            raise CertificateInvalid(f"--tls-client-ca {files.client_ca}: not a valid PEM CA bundle") from exc
    digest = hashlib.sha256()
    for data in (chain, key, client_ca or b""):
        digest.update(hashlib.sha256(data).digest())
    return KeyMaterial(chain, key, client_ca, fingerprint, digest.hexdigest())


Signature = tuple[tuple[int, int, int] | None, ...]


def _stat_signature(files: CertificateFiles) -> Signature:
    """(mtime, size, inode) of each file, None for one that is missing."""
    signature: list[tuple[int, int, int] | None] = []
    for _, path in files.named():
        try:
            stat = os.stat(path)
            signature.append((stat.st_mtime_ns, stat.st_size, stat.st_ino))
        except OSError:
            signature.append(None)
    return tuple(signature)


class CertificateWatch:
    """The current key material and when to replace it; safe to call from any thread."""

    def __init__(self, files: CertificateFiles) -> None:
        self.files = files
        self._lock = threading.Lock()
        self._seen = _stat_signature(files)
        self.current = load_key_material(files)  # at start-up a bad file is an error, not a warning
        self._fresh: KeyMaterial | None = None  # loaded, not yet taken by the TLS stack

    def reload(self, why: str) -> KeyMaterial | None:
        """Read the files now, whatever their stat says (SIGHUP); the new material when it differs from
        the current and passes the checks, else None (the current stays)."""
        with self._lock:
            return self._reload(why, _stat_signature(self.files))

    def take_fresh(self) -> KeyMaterial | None:
        """Material the TLS stack has not taken yet: from a reload, or read now because a file's stat
        moved since the last look. None: keep the current."""
        with self._lock:
            signature = _stat_signature(self.files)
            if signature != self._seen:
                self._reload("the files changed", signature)
            fresh, self._fresh = self._fresh, None
            return fresh

    def _reload(self, why: str, signature: Signature) -> KeyMaterial | None:
        self._seen = signature  # a refused version is not read again until the files move (or SIGHUP)
        try:
            material = load_key_material(self.files)
        except CertificateInvalid as exc:
            log.warning("TLS reload (%s) refused, kept the current %s: %s", why, self.current.describe(), exc.message)
            return None
        if material.digest == self.current.digest:
            log.info("TLS reload (%s): the files hold the current %s", why, material.describe())
            return None
        log.info("TLS reload (%s): now serving %s (was %s)", why, material.describe(), self.current.fingerprint)
        self.current = material
        self._fresh = material
        return material
