"""One error tree for quantledger and registry_client: a single root, one class per reason, wire forms kept."""

from __future__ import annotations

import inspect
import re
from collections import defaultdict

import quantledger.errors as service_errors
import registry_client.errors as registry_errors
from quantledger.quantize.runner import error_for_reason

MODULES = (service_errors, registry_errors)

#: every error class callers import today, with its wire form (status code name, ErrorInfo reason)
WIRE_FORMS = {
    service_errors: {
        "QuantledgerError": ("INTERNAL", "INTERNAL"),
        "SourceNotFound": ("NOT_FOUND", "SOURCE_NOT_FOUND"),
        "RecordNotFound": ("NOT_FOUND", "RECORD_NOT_FOUND"),
        "SourceInvalid": ("INVALID_ARGUMENT", "SOURCE_INVALID"),
        "PathNotAllowed": ("PERMISSION_DENIED", "PATH_NOT_ALLOWED"),
        "UnsupportedArchitecture": ("INVALID_ARGUMENT", "UNSUPPORTED_ARCHITECTURE"),
        "UnknownQuantType": ("INVALID_ARGUMENT", "UNKNOWN_QUANT_TYPE"),
        "RequantizeRefused": ("FAILED_PRECONDITION", "REQUANTIZE_REFUSED"),
        "ImatrixRequired": ("FAILED_PRECONDITION", "IMATRIX_REQUIRED"),
        "ImatrixInvalid": ("INVALID_ARGUMENT", "IMATRIX_INVALID"),
        "LoraInvalid": ("INVALID_ARGUMENT", "LORA_INVALID"),
        "InvalidArgument": ("INVALID_ARGUMENT", "INVALID_ARGUMENT"),
        "InsufficientDisk": ("RESOURCE_EXHAUSTED", "INSUFFICIENT_DISK"),
        "JobNotFound": ("NOT_FOUND", "JOB_NOT_FOUND"),
        "JobAlreadyFinished": ("FAILED_PRECONDITION", "JOB_ALREADY_FINISHED"),
        "JobRunning": ("FAILED_PRECONDITION", "JOB_RUNNING"),
        "QuotaExceeded": ("RESOURCE_EXHAUSTED", "QUOTA_EXCEEDED"),
        "TooManyStreams": ("RESOURCE_EXHAUSTED", "TOO_MANY_STREAMS"),
        "RequestIdConflict": ("ALREADY_EXISTS", "REQUEST_ID_CONFLICT"),
        "OutputExists": ("ALREADY_EXISTS", "OUTPUT_EXISTS"),
        "Interrupted": ("ABORTED", "INTERRUPTED"),
        "QualityGateFailed": ("FAILED_PRECONDITION", "QUALITY_GATE_FAILED"),
        "ConversionFailed": ("INTERNAL", "CONVERSION_FAILED"),
        "QuantizeFailed": ("INTERNAL", "QUANTIZE_FAILED"),
        "WorkerCrashed": ("INTERNAL", "WORKER_CRASHED"),
        "DeadlineExceeded": ("DEADLINE_EXCEEDED", "DEADLINE_EXCEEDED"),
        "StageTimeout": ("DEADLINE_EXCEEDED", "STAGE_TIMEOUT"),
        "JobTimeout": ("DEADLINE_EXCEEDED", "JOB_TIMEOUT"),
        "ValidationTimeout": ("DEADLINE_EXCEEDED", "VALIDATION_TIMEOUT"),
        "PortInUse": ("UNAVAILABLE", "PORT_IN_USE"),
        "HubUnavailable": ("UNAVAILABLE", "HUB_UNAVAILABLE"),
        "ConfigInvalid": ("FAILED_PRECONDITION", "CONFIG_INVALID"),
        "AuthenticationFailed": ("UNAUTHENTICATED", "TOKEN_INVALID"),
        "TokenExpired": ("UNAUTHENTICATED", "TOKEN_EXPIRED"),
        "TooManyAttempts": ("RESOURCE_EXHAUSTED", "TOO_MANY_ATTEMPTS"),
        "TokenNameTaken": ("ALREADY_EXISTS", "TOKEN_NAME_TAKEN"),
        "TokenNotFound": ("NOT_FOUND", "TOKEN_NOT_FOUND"),
        "CertificateInvalid": ("FAILED_PRECONDITION", "CERTIFICATE_INVALID"),
        "InsecureListen": ("FAILED_PRECONDITION", "INSECURE_LISTEN"),
    },
    registry_errors: {
        "QuantledgerError": ("INTERNAL", "INTERNAL"),
        "RegistryError": ("INTERNAL", "REGISTRY_ERROR"),
        "RegistryUnavailable": ("UNAVAILABLE", "REGISTRY_UNAVAILABLE"),
        "ContractNotDeployed": ("FAILED_PRECONDITION", "REGISTRY_NOT_DEPLOYED"),
        "CompilationFailed": ("INTERNAL", "COMPILATION_FAILED"),
        "InvalidRegistration": ("INVALID_ARGUMENT", "INVALID_RECORD"),
        "KeyUnavailable": ("FAILED_PRECONDITION", "KEY_UNAVAILABLE"),
        "TransactionFailed": ("ABORTED", "TRANSACTION_FAILED"),
        "ContractRejected": ("FAILED_PRECONDITION", "CONTRACT_REJECTED"),
        "NotAttester": ("PERMISSION_DENIED", "NOT_ATTESTER"),
        "AlreadyRegistered": ("ALREADY_EXISTS", "ALREADY_REGISTERED"),
        "RecordNotFound": ("NOT_FOUND", "RECORD_NOT_FOUND"),
        "AlreadyRevoked": ("FAILED_PRECONDITION", "ALREADY_REVOKED"),
        "InvalidRecord": ("INVALID_ARGUMENT", "INVALID_RECORD"),
    },
}


def error_classes() -> set[type[BaseException]]:
    return {
        member
        for module in MODULES
        for _, member in inspect.getmembers(module, inspect.isclass)
        if issubclass(member, BaseException)
    }


def test_both_packages_share_one_root_and_each_reason_has_one_class() -> None:
    classes = error_classes()
    roots = {c for c in classes if not any(base in classes for base in c.__bases__)}
    assert roots == {registry_errors.QuantledgerError}
    assert service_errors.QuantledgerError is registry_errors.QuantledgerError
    assert registry_errors.QuantledgerError.__module__ == "registry_client.errors"  # the lower package

    defined_by: dict[str, list[str]] = defaultdict(list)
    for cls in classes:
        assert re.fullmatch(r"[A-Z][A-Z0-9_]*", cls.reason), cls  # type: ignore[attr-defined]
        if "reason" in vars(cls):
            defined_by[cls.reason].append(cls.__qualname__)  # type: ignore[attr-defined]
    assert {reason: names for reason, names in defined_by.items() if len(names) > 1} == {}
    for cls in classes:
        # a worker reports errors by reason; the parent gets back a kind of the class defining it
        owner = next(c for c in cls.__mro__ if "reason" in vars(c))
        assert isinstance(error_for_reason(cls.reason, "m"), owner)  # type: ignore[attr-defined]


def test_every_name_is_importable_where_it_was_with_its_wire_form() -> None:
    for module, names in WIRE_FORMS.items():
        for name, wire in names.items():
            cls = getattr(module, name)
            assert (cls.code, cls.reason) == wire, f"{module.__name__}.{name}"
    assert service_errors.RecordNotFound is registry_errors.RecordNotFound
    assert issubclass(registry_errors.InvalidRecord, registry_errors.ContractRejected)


def test_registry_errors_are_bounded_like_every_other_error() -> None:
    error = registry_errors.TransactionFailed("x" * 10_000, url="u" * 10_000)
    assert len(error.message) <= registry_errors.MAX_MESSAGE_CHARS
    assert len(error.metadata["url"]) <= registry_errors.MAX_METADATA_CHARS
    rejected = registry_errors.RecordNotFound("no such record", sha256="ab" * 32)
    assert rejected.metadata == {"sha256": "ab" * 32}  # Recommend's metadata, unchanged
    assert registry_errors.AlreadyRevoked("r", error_name="AlreadyRevoked").metadata == {"error": "AlreadyRevoked"}
