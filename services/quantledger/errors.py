"""Errors quantledger raises on purpose.

Every error knows its wire form: a canonical gRPC status code name (``code``) and the
``google.rpc.ErrorInfo`` reason (``reason``) clients branch on. This module imports no grpc;
the gRPC layer maps ``code`` to ``grpc.StatusCode``.

    QuantledgerError                      INTERNAL
    ├── SourceNotFound                    NOT_FOUND            SOURCE_NOT_FOUND
    │   └── RecordNotFound                NOT_FOUND            RECORD_NOT_FOUND (Recommend: no such file here)
    ├── SourceInvalid                     INVALID_ARGUMENT     SOURCE_INVALID
    ├── PathNotAllowed                    PERMISSION_DENIED    PATH_NOT_ALLOWED
    ├── UnsupportedArchitecture           INVALID_ARGUMENT     UNSUPPORTED_ARCHITECTURE
    ├── UnknownQuantType                  INVALID_ARGUMENT     UNKNOWN_QUANT_TYPE
    ├── RequantizeRefused                 FAILED_PRECONDITION  REQUANTIZE_REFUSED
    ├── ImatrixRequired                   FAILED_PRECONDITION  IMATRIX_REQUIRED
    ├── ImatrixInvalid                    INVALID_ARGUMENT     IMATRIX_INVALID
    ├── LoraInvalid                       INVALID_ARGUMENT     LORA_INVALID
    ├── InvalidArgument                   INVALID_ARGUMENT     INVALID_ARGUMENT
    ├── InsufficientDisk                  RESOURCE_EXHAUSTED   INSUFFICIENT_DISK
    ├── JobNotFound                       NOT_FOUND            JOB_NOT_FOUND
    ├── JobAlreadyFinished                FAILED_PRECONDITION  JOB_ALREADY_FINISHED
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
    └── PortInUse                         UNAVAILABLE          PORT_IN_USE
"""

from __future__ import annotations

from typing import ClassVar

DOMAIN = "quantledger.v1"
# bounds on what an error carries, so no client string can make an error exceed a message limit
MAX_MESSAGE_CHARS = 2000
MAX_METADATA_CHARS = 500
MAX_METADATA_ENTRIES = 16
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


def _bounded(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 30] + f"… ({len(text)} characters)"


class QuantledgerError(Exception):
    """Root of every error this package raises on purpose.

    The message and metadata values are cut to MAX_MESSAGE_CHARS / MAX_METADATA_CHARS, whatever the
    caller put in them.
    """

    code: ClassVar[str] = "INTERNAL"
    reason: ClassVar[str] = "INTERNAL"

    def __init__(self, message: str, **metadata: str) -> None:
        message = _bounded(str(message), MAX_MESSAGE_CHARS)
        super().__init__(message)
        self.message = message
        items = list(metadata.items())[:MAX_METADATA_ENTRIES]
        self.metadata: dict[str, str] = {k[:64]: _bounded(str(v), MAX_METADATA_CHARS) for k, v in items}


class SourceNotFound(QuantledgerError):
    code = "NOT_FOUND"
    reason = "SOURCE_NOT_FOUND"


class RecordNotFound(SourceNotFound):
    """A file digest no finished job of this deployment made (or whose file is gone)."""

    reason = "RECORD_NOT_FOUND"


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


class InsufficientDisk(QuantledgerError):
    code = "RESOURCE_EXHAUSTED"
    reason = "INSUFFICIENT_DISK"


class JobNotFound(QuantledgerError):
    code = "NOT_FOUND"
    reason = "JOB_NOT_FOUND"


class JobAlreadyFinished(QuantledgerError):
    code = "FAILED_PRECONDITION"
    reason = "JOB_ALREADY_FINISHED"


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
