"""The one error root of quantledger and registry_client, and the registry client's errors.

Every error either package raises on purpose derives from :class:`QuantledgerError`, defined here (the
lower package) so that ``registry_client`` needs nothing from ``quantledger``; ``quantledger.errors``
re-exports it and adds the service's own errors under it. ``except QuantledgerError`` therefore catches
both packages' errors, and the gRPC layer maps one tree.

Each class carries the canonical status code name (``code``) and the ``google.rpc.ErrorInfo`` reason
(``reason``) that the services put on the wire; every reason is defined by exactly one class.

    QuantledgerError                   INTERNAL             INTERNAL               (quantledger.errors: the rest)
    └── RegistryError                  INTERNAL             REGISTRY_ERROR
        ├── RegistryUnavailable        UNAVAILABLE          REGISTRY_UNAVAILABLE   endpoint down, wrong chain
        ├── ContractNotDeployed        FAILED_PRECONDITION  REGISTRY_NOT_DEPLOYED  no registry code at the address
        ├── CompilationFailed          INTERNAL             COMPILATION_FAILED     solc refused (building only)
        ├── InvalidRegistration        INVALID_ARGUMENT     INVALID_RECORD         refused before sending anything
        ├── KeyUnavailable             FAILED_PRECONDITION  KEY_UNAVAILABLE        no key, unreadable or exposed key
        ├── TransactionFailed          ABORTED              TRANSACTION_FAILED     mined but reverted, or not mined
        └── ContractRejected           FAILED_PRECONDITION  CONTRACT_REJECTED      a custom error of the contract
            ├── NotAttester            PERMISSION_DENIED    NOT_ATTESTER           MissingRole(role, account)
            ├── AlreadyRegistered      ALREADY_EXISTS       ALREADY_REGISTERED
            ├── RecordNotFound         NOT_FOUND            RECORD_NOT_FOUND       also: Recommend's unknown file
            ├── AlreadyRevoked         FAILED_PRECONDITION  ALREADY_REVOKED
            └── InvalidRecord          INVALID_ARGUMENT     INVALID_RECORD         (also an InvalidRegistration)

``InvalidRecord`` is the contract's refusal of what ``InvalidRegistration`` refuses locally: it derives
from both and takes its reason from ``InvalidRegistration``.
"""

from __future__ import annotations

from typing import Any, ClassVar

#: the ``google.rpc.ErrorInfo`` domain of every reason
DOMAIN = "quantledger.v1"
# bounds on what an error carries, so no client string can make an error exceed a message limit
MAX_MESSAGE_CHARS = 2000
MAX_METADATA_CHARS = 500
MAX_METADATA_ENTRIES = 16
MAX_METADATA_KEY_CHARS = 64


def _bounded(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 30] + f"… ({len(text)} characters)"


class QuantledgerError(Exception):
    """Root of every error quantledger and registry_client raise on purpose.

    The message and metadata values are cut to MAX_MESSAGE_CHARS / MAX_METADATA_CHARS (at most
    MAX_METADATA_ENTRIES entries), whatever the caller put in them.
    """

    code: ClassVar[str] = "INTERNAL"
    reason: ClassVar[str] = "INTERNAL"

    def __init__(self, message: str, **metadata: object) -> None:
        message = _bounded(str(message), MAX_MESSAGE_CHARS)
        super().__init__(message)
        self.message = message
        items = list(metadata.items())[:MAX_METADATA_ENTRIES]
        self.metadata: dict[str, str] = {
            k[:MAX_METADATA_KEY_CHARS]: _bounded(str(v), MAX_METADATA_CHARS) for k, v in items
        }


class RegistryError(QuantledgerError):
    """Root of the registry client's errors."""

    reason = "REGISTRY_ERROR"


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

    def __init__(
        self, message: str, *, error_name: str = "", error_args: tuple[Any, ...] = (), **metadata: object
    ) -> None:
        if error_name:
            metadata = {"error": error_name, **metadata}
        super().__init__(message, **metadata)
        self.error_name = error_name
        self.error_args = error_args


class NotAttester(ContractRejected):
    code = "PERMISSION_DENIED"
    reason = "NOT_ATTESTER"


class AlreadyRegistered(ContractRejected):
    code = "ALREADY_EXISTS"
    reason = "ALREADY_REGISTERED"


class RecordNotFound(ContractRejected):
    """No record of that file by that attester; the RecommendService also raises it for a file digest
    no finished job of this deployment made (or whose file is gone)."""

    code = "NOT_FOUND"
    reason = "RECORD_NOT_FOUND"


class AlreadyRevoked(ContractRejected):
    reason = "ALREADY_REVOKED"


class InvalidRecord(InvalidRegistration, ContractRejected):
    """The contract's InvalidBatchSize, ZeroDigest, InvalidSize, ... (any custom error not named above)."""
