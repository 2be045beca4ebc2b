"""Errors of the registry client. Each carries the canonical status code name (``code``) and the
``google.rpc.ErrorInfo`` reason (``reason``) that the services put on the wire.

    RegistryError                  INTERNAL             REGISTRY_ERROR
    ├── RegistryUnavailable        UNAVAILABLE          REGISTRY_UNAVAILABLE   endpoint down, wrong chain
    ├── ContractNotDeployed        FAILED_PRECONDITION  REGISTRY_NOT_DEPLOYED  no registry code at the address
    ├── CompilationFailed          INTERNAL             COMPILATION_FAILED     solc refused (building only)
    ├── InvalidRegistration        INVALID_ARGUMENT     INVALID_RECORD         refused before sending anything
    ├── KeyUnavailable             FAILED_PRECONDITION  KEY_UNAVAILABLE        no key, unreadable or exposed key
    ├── TransactionFailed          ABORTED              TRANSACTION_FAILED     mined but reverted, or not mined
    └── ContractRejected           FAILED_PRECONDITION  CONTRACT_REJECTED      a custom error of the contract
        ├── NotAttester            PERMISSION_DENIED    NOT_ATTESTER           MissingRole(role, account)
        ├── AlreadyRegistered      ALREADY_EXISTS       ALREADY_REGISTERED
        ├── RecordNotFound         NOT_FOUND            RECORD_NOT_FOUND
        ├── AlreadyRevoked         FAILED_PRECONDITION  ALREADY_REVOKED
        └── InvalidRecord          INVALID_ARGUMENT     INVALID_RECORD         zero digest, bad size/label/page/batch
"""

from __future__ import annotations

from typing import Any, ClassVar


class RegistryError(Exception):
    """Root of every error this package raises on purpose."""

    code: ClassVar[str] = "INTERNAL"
    reason: ClassVar[str] = "REGISTRY_ERROR"

    def __init__(self, message: str, **metadata: Any) -> None:
        super().__init__(message)
        self.message = message
        self.metadata: dict[str, str] = {k: str(v) for k, v in metadata.items()}


class RegistryUnavailable(RegistryError):
    code = "UNAVAILABLE"
    reason = "REGISTRY_UNAVAILABLE"


class ContractNotDeployed(RegistryError):
    code = "FAILED_PRECONDITION"
    reason = "REGISTRY_NOT_DEPLOYED"


class CompilationFailed(RegistryError):
    reason = "COMPILATION_FAILED"


class InvalidRegistration(RegistryError):
    code = "INVALID_ARGUMENT"
    reason = "INVALID_RECORD"


class KeyUnavailable(RegistryError):
    code = "FAILED_PRECONDITION"
    reason = "KEY_UNAVAILABLE"


class TransactionFailed(RegistryError):
    code = "ABORTED"
    reason = "TRANSACTION_FAILED"


class ContractRejected(RegistryError):
    """The contract reverted with a custom error; ``error_name`` and ``error_args`` say which."""

    code = "FAILED_PRECONDITION"
    reason = "CONTRACT_REJECTED"

    def __init__(self, message: str, *, error_name: str = "", error_args: tuple[Any, ...] = ()) -> None:
        super().__init__(message, error=error_name)
        self.error_name = error_name
        self.error_args = error_args


class NotAttester(ContractRejected):
    code = "PERMISSION_DENIED"
    reason = "NOT_ATTESTER"


class AlreadyRegistered(ContractRejected):
    code = "ALREADY_EXISTS"
    reason = "ALREADY_REGISTERED"


class RecordNotFound(ContractRejected):
    code = "NOT_FOUND"
    reason = "RECORD_NOT_FOUND"


class AlreadyRevoked(ContractRejected):
    reason = "ALREADY_REVOKED"


class InvalidRecord(ContractRejected):
    code = "INVALID_ARGUMENT"
    reason = "INVALID_RECORD"
