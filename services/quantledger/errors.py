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
    └── WorkerCrashed                     INTERNAL             WORKER_CRASHED
"""

from __future__ import annotations

from typing import ClassVar

DOMAIN = "quantledger.v1"


class QuantledgerError(Exception):
    """Root of every error this package raises on purpose."""

    code: ClassVar[str] = "INTERNAL"
    reason: ClassVar[str] = "INTERNAL"

    def __init__(self, message: str, **metadata: str) -> None:
        super().__init__(message)
        self.message = message
        self.metadata: dict[str, str] = {k: str(v) for k, v in metadata.items()}


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
