"""Errors quantledger raises on purpose.

Every error knows its wire form: a canonical gRPC status code name (``code``) and the
``google.rpc.ErrorInfo`` reason (``reason``) clients branch on. This module imports no grpc;
the gRPC layer maps ``code`` to ``grpc.StatusCode``.

The root, :class:`QuantledgerError`, lives in ``registry_client.errors`` (the lower package, whose
``RegistryError`` tree hangs under it too) and is re-exported here, so ``except QuantledgerError``
catches every error of both packages. ``RecordNotFound`` (RECORD_NOT_FOUND) is registry_client's,
re-exported here for the RecommendService. Every reason is defined by exactly one class.

    QuantledgerError                      INTERNAL             INTERNAL
    ├── RegistryError …                                        (registry_client.errors: REGISTRY_*, RECORD_NOT_FOUND, …)
    ├── SourceNotFound                    NOT_FOUND            SOURCE_NOT_FOUND
    ├── HubUnavailable                    UNAVAILABLE          HUB_UNAVAILABLE
    ├── SourceInvalid                     INVALID_ARGUMENT     SOURCE_INVALID
    ├── PathNotAllowed                    PERMISSION_DENIED    PATH_NOT_ALLOWED
    ├── UnsupportedArchitecture           INVALID_ARGUMENT     UNSUPPORTED_ARCHITECTURE
    ├── UnknownQuantType                  INVALID_ARGUMENT     UNKNOWN_QUANT_TYPE
    ├── FormatUnavailable                 FAILED_PRECONDITION  FORMAT_UNAVAILABLE
    ├── FormatNotApplicable               FAILED_PRECONDITION  FORMAT_NOT_APPLICABLE
    ├── ProvenanceMismatch                FAILED_PRECONDITION  PROVENANCE_MISMATCH
    ├── SourceMismatch                    FAILED_PRECONDITION  SOURCE_MISMATCH
    ├── ToolVersionMismatch               FAILED_PRECONDITION  TOOL_VERSION_MISMATCH
    ├── RequantizeRefused                 FAILED_PRECONDITION  REQUANTIZE_REFUSED
    ├── ImatrixRequired                   FAILED_PRECONDITION  IMATRIX_REQUIRED
    ├── ImatrixInvalid                    INVALID_ARGUMENT     IMATRIX_INVALID
    ├── LoraInvalid                       INVALID_ARGUMENT     LORA_INVALID
    ├── InvalidArgument                   INVALID_ARGUMENT     INVALID_ARGUMENT
    ├── ConfigInvalid                     FAILED_PRECONDITION  CONFIG_INVALID
    ├── InsufficientDisk                  RESOURCE_EXHAUSTED   INSUFFICIENT_DISK
    ├── QuotaExceeded                     RESOURCE_EXHAUSTED   QUOTA_EXCEEDED
    ├── TooManyStreams                    RESOURCE_EXHAUSTED   TOO_MANY_STREAMS
    ├── RequestTooLarge                   RESOURCE_EXHAUSTED   REQUEST_TOO_LARGE
    ├── JobNotFound                       NOT_FOUND            JOB_NOT_FOUND
    ├── JobAlreadyFinished                FAILED_PRECONDITION  JOB_ALREADY_FINISHED
    ├── JobRunning                        FAILED_PRECONDITION  JOB_RUNNING
    ├── RequestIdConflict                 ALREADY_EXISTS       REQUEST_ID_CONFLICT
    ├── OutputExists                      ALREADY_EXISTS       OUTPUT_EXISTS
    ├── Interrupted                       ABORTED              INTERRUPTED
    ├── QualityGateFailed                 FAILED_PRECONDITION  QUALITY_GATE_FAILED
    ├── ConversionFailed                  INTERNAL             CONVERSION_FAILED
    ├── QuantizeFailed                    INTERNAL             QUANTIZE_FAILED
    ├── WorkerCrashed                     INTERNAL             WORKER_CRASHED
    ├── DeadlineExceeded                  DEADLINE_EXCEEDED    DEADLINE_EXCEEDED
    │   ├── StageTimeout                  DEADLINE_EXCEEDED    STAGE_TIMEOUT
    │   ├── JobTimeout                    DEADLINE_EXCEEDED    JOB_TIMEOUT
    │   └── ValidationTimeout             DEADLINE_EXCEEDED    VALIDATION_TIMEOUT
    ├── PortInUse                         UNAVAILABLE          PORT_IN_USE
    ├── AuthenticationFailed              UNAUTHENTICATED      TOKEN_INVALID
    │   └── TokenExpired                  UNAUTHENTICATED      TOKEN_EXPIRED
    ├── TooManyAttempts                   RESOURCE_EXHAUSTED   TOO_MANY_ATTEMPTS
    ├── TokenNameTaken                    ALREADY_EXISTS       TOKEN_NAME_TAKEN
    ├── TokenNotFound                     NOT_FOUND            TOKEN_NOT_FOUND
    ├── CertificateInvalid                FAILED_PRECONDITION  CERTIFICATE_INVALID
    ├── InsecureListen                    FAILED_PRECONDITION  INSECURE_LISTEN
    ├── BackendUnavailable                UNAVAILABLE          BACKEND_UNAVAILABLE
    ├── ArtifactStoreUnavailable          UNAVAILABLE          ARTIFACT_STORE_UNAVAILABLE
    ├── ArtifactStoreDenied               PERMISSION_DENIED    ARTIFACT_STORE_DENIED
    ├── ArtifactBucketNotFound            FAILED_PRECONDITION  ARTIFACT_BUCKET_NOT_FOUND
    ├── ArtifactDigestMismatch            DATA_LOSS            ARTIFACT_DIGEST_MISMATCH
    └── WorkerLost                        UNAVAILABLE          WORKER_LOST
"""

from __future__ import annotations

# re-exported: the root and RECORD_NOT_FOUND are defined once, in the lower package
from registry_client.errors import DOMAIN as DOMAIN
from registry_client.errors import QuantledgerError as QuantledgerError
from registry_client.errors import RecordNotFound as RecordNotFound

QUOTE_LIMIT = 200


def quote_client(text: object, limit: int = QUOTE_LIMIT, *, quoted: bool = True) -> str:
    """A client-supplied string for an error message: ``repr``-quoted (control characters escaped) and
    cut to ``limit`` characters with a note of the full length."""
    value = str(text)
    shown = value[:limit]
    rendered = repr(shown) if quoted else repr(shown)[1:-1]
    if len(value) > limit:
        rendered += f"… ({len(value)} characters)"
    return rendered


class SourceNotFound(QuantledgerError):
    code = "NOT_FOUND"
    reason = "SOURCE_NOT_FOUND"


class HubUnavailable(QuantledgerError):
    """The Hugging Face hub does not answer (network down, DNS, a refused connection, a 5xx) and the
    local cache cannot stand in; retry later or set HF_HUB_OFFLINE with a filled cache."""

    code = "UNAVAILABLE"
    reason = "HUB_UNAVAILABLE"


class SourceInvalid(QuantledgerError):
    code = "INVALID_ARGUMENT"
    reason = "SOURCE_INVALID"


class PathNotAllowed(QuantledgerError):
    code = "PERMISSION_DENIED"
    reason = "PATH_NOT_ALLOWED"


class UnsupportedArchitecture(QuantledgerError):
    code = "INVALID_ARGUMENT"
    reason = "UNSUPPORTED_ARCHITECTURE"


class UnknownQuantType(QuantledgerError):
    code = "INVALID_ARGUMENT"
    reason = "UNKNOWN_QUANT_TYPE"


class FormatUnavailable(QuantledgerError):
    """An output format whose libraries this installation lacks (the message names the pip command), or
    that this backend cannot write."""

    code = "FAILED_PRECONDITION"
    reason = "FORMAT_UNAVAILABLE"


class FormatNotApplicable(QuantledgerError):
    """An output format that cannot be made of this source: a Hugging Face format of a GGUF source, or a
    bitsandbytes format of a model with no linear layers to quantize."""

    code = "FAILED_PRECONDITION"
    reason = "FORMAT_NOT_APPLICABLE"


class ProvenanceMismatch(QuantledgerError):
    """The provenance JSON is not the one the record names (its SHA-256 differs from every record's)."""

    code = "FAILED_PRECONDITION"
    reason = "PROVENANCE_MISMATCH"


class SourceMismatch(QuantledgerError):
    """The reproducer's source (or LoRA adapter, or importance matrix) is not what the record was made from."""

    code = "FAILED_PRECONDITION"
    reason = "SOURCE_MISMATCH"


class ToolVersionMismatch(QuantledgerError):
    """Another quantizer release than the record's is installed (``--any-version`` accepts it, recorded)."""

    code = "FAILED_PRECONDITION"
    reason = "TOOL_VERSION_MISMATCH"


class RequantizeRefused(QuantledgerError):
    code = "FAILED_PRECONDITION"
    reason = "REQUANTIZE_REFUSED"


class ImatrixRequired(QuantledgerError):
    code = "FAILED_PRECONDITION"
    reason = "IMATRIX_REQUIRED"


class ImatrixInvalid(QuantledgerError):
    code = "INVALID_ARGUMENT"
    reason = "IMATRIX_INVALID"


class LoraInvalid(QuantledgerError):
    code = "INVALID_ARGUMENT"
    reason = "LORA_INVALID"


class InvalidArgument(QuantledgerError):
    code = "INVALID_ARGUMENT"
    reason = "INVALID_ARGUMENT"


class ConfigInvalid(QuantledgerError):
    """A ``QUANTLEDGER_*`` environment variable the settings cannot read (the message names it)."""

    code = "FAILED_PRECONDITION"
    reason = "CONFIG_INVALID"


class InsufficientDisk(QuantledgerError):
    code = "RESOURCE_EXHAUSTED"
    reason = "INSUFFICIENT_DISK"


class QuotaExceeded(QuantledgerError):
    """A principal's quota refuses a new job; metadata names the quota, its limit, the amount in use and
    the amount the job would add (nothing is created)."""

    code = "RESOURCE_EXHAUSTED"
    reason = "QUOTA_EXCEEDED"


class TooManyStreams(QuantledgerError):
    """The caller already holds as many open WatchQuantizeJob streams as one principal may
    (QUANTLEDGER_MAX_WATCH_STREAMS); close one, or watch fewer jobs at once."""

    code = "RESOURCE_EXHAUSTED"
    reason = "TOO_MANY_STREAMS"


class RequestTooLarge(QuantledgerError):
    """An HTTP request body larger than QUANTLEDGER_MAX_MESSAGE_BYTES (gRPC refuses such a message
    before any servicer runs; the HTTP surface refuses it with 413 before reading further)."""

    code = "RESOURCE_EXHAUSTED"
    reason = "REQUEST_TOO_LARGE"


class JobNotFound(QuantledgerError):
    code = "NOT_FOUND"
    reason = "JOB_NOT_FOUND"


class JobAlreadyFinished(QuantledgerError):
    code = "FAILED_PRECONDITION"
    reason = "JOB_ALREADY_FINISHED"


class JobRunning(QuantledgerError):
    """The job has not ended (QUEUED or RUNNING): its outputs cannot be deleted; cancel it first."""

    code = "FAILED_PRECONDITION"
    reason = "JOB_RUNNING"


class RequestIdConflict(QuantledgerError):
    code = "ALREADY_EXISTS"
    reason = "REQUEST_ID_CONFLICT"


class OutputExists(QuantledgerError):
    code = "ALREADY_EXISTS"
    reason = "OUTPUT_EXISTS"


class Interrupted(QuantledgerError):
    code = "ABORTED"
    reason = "INTERRUPTED"


class QualityGateFailed(QuantledgerError):
    code = "FAILED_PRECONDITION"
    reason = "QUALITY_GATE_FAILED"


class ConversionFailed(QuantledgerError):
    code = "INTERNAL"
    reason = "CONVERSION_FAILED"


class QuantizeFailed(QuantledgerError):
    code = "INTERNAL"
    reason = "QUANTIZE_FAILED"


class WorkerCrashed(QuantledgerError):
    code = "INTERNAL"
    reason = "WORKER_CRASHED"


class DeadlineExceeded(QuantledgerError):
    """Work that ran past its time bound; the subclasses say which bound."""

    code = "DEADLINE_EXCEEDED"
    reason = "DEADLINE_EXCEEDED"


class StageTimeout(DeadlineExceeded):
    """One stage (a worker process: fetch, convert, quantize, evaluate) ran past QUANTLEDGER_STAGE_TIMEOUT_SECONDS."""

    reason = "STAGE_TIMEOUT"


class JobTimeout(DeadlineExceeded):
    """A whole job ran past QUANTLEDGER_JOB_TIMEOUT_SECONDS."""

    reason = "JOB_TIMEOUT"


class ValidationTimeout(DeadlineExceeded):
    """Checking a request's files did not finish within the client's deadline (or the server's bound)."""

    reason = "VALIDATION_TIMEOUT"


class PortInUse(QuantledgerError):
    """A server cannot listen on its address: the port is taken (never shared) or the address is not local."""

    code = "UNAVAILABLE"
    reason = "PORT_IN_USE"


class AuthenticationFailed(QuantledgerError):
    """A call without a valid credential: no token, a malformed, unknown or wrong one, or a revoked one.
    The message never says which, so a guesser learns nothing from it."""

    code = "UNAUTHENTICATED"
    reason = "TOKEN_INVALID"


class TokenExpired(AuthenticationFailed):
    """A token that was valid (its secret checked) and is past its expiry; make a new one."""

    reason = "TOKEN_EXPIRED"


class TooManyAttempts(QuantledgerError):
    """Too many failed authentications from one peer: refused without checking, until the limit refills."""

    code = "RESOURCE_EXHAUSTED"
    reason = "TOO_MANY_ATTEMPTS"


class TokenNameTaken(QuantledgerError):
    """``tokens create NAME`` where a token of that name is still valid (revoke it first)."""

    code = "ALREADY_EXISTS"
    reason = "TOKEN_NAME_TAKEN"


class TokenNotFound(QuantledgerError):
    """``tokens revoke NAME`` where no unrevoked token has that name."""

    code = "NOT_FOUND"
    reason = "TOKEN_NOT_FOUND"


class CertificateInvalid(QuantledgerError):
    """A TLS certificate, key or CA file that cannot be used (unreadable, not PEM, a key that does not
    match its certificate); the message names the flag that gave it."""

    code = "FAILED_PRECONDITION"
    reason = "CERTIFICATE_INVALID"


class InsecureListen(QuantledgerError):
    """A server asked to listen beyond loopback without TLS and authentication (or the embedded chain,
    which has neither, asked to listen beyond loopback); the message names the flags to add."""

    code = "FAILED_PRECONDITION"
    reason = "INSECURE_LISTEN"


class BackendUnavailable(QuantledgerError):
    """The distributed job backend (Temporal) did not answer: nothing was created or changed."""

    code = "UNAVAILABLE"
    reason = "BACKEND_UNAVAILABLE"


class WorkerLost(QuantledgerError):
    """A distributed job's step stopped answering (its worker died or hung) on every attempt Temporal made."""

    code = "UNAVAILABLE"
    reason = "WORKER_LOST"


class ArtifactStoreUnavailable(QuantledgerError):
    """The S3 artifact store did not answer (or failed a request); retried where a step can be."""

    code = "UNAVAILABLE"
    reason = "ARTIFACT_STORE_UNAVAILABLE"


class ArtifactStoreDenied(QuantledgerError):
    """The S3 artifact store refused the credentials (or there are none)."""

    code = "PERMISSION_DENIED"
    reason = "ARTIFACT_STORE_DENIED"


class ArtifactBucketNotFound(QuantledgerError):
    """The artifact store's bucket does not exist."""

    code = "FAILED_PRECONDITION"
    reason = "ARTIFACT_BUCKET_NOT_FOUND"


class ArtifactDigestMismatch(QuantledgerError):
    """An object's bytes are not those recorded for it (changed or damaged in the store); never an output."""

    code = "DATA_LOSS"
    reason = "ARTIFACT_DIGEST_MISMATCH"
