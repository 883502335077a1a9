"""One exception tree for the whole gateway.

Every error a user can meet is a :class:`GatewayError`. Each class carries a
stable ``code`` (used in the JSON error body and in tests) and an HTTP
``status``; the API maps them to ``{"error": {"code", "message", "details"}}``
and the CLI to a one-line reason on stderr and a non-zero exit status.

    GatewayError
    ├── ConfigurationError          settings, data folder, database URL
    │   └── MasterKeyError          missing, short or over-readable master key
    ├── NotInitialised              data folder or database not set up yet
    ├── AgreementInvalid            agreement / policy files fail validation
    ├── NotFound                    unknown agreement, party, dataset, event
    ├── PolicyViolation             the agreement does not allow this
    ├── SchemaError                 an uploaded file does not match its schema
    ├── AuditChainBroken            the audit log fails verification
    ├── Unauthenticated             no, unknown, expired or revoked bearer token (401)
    ├── AccessDenied                the credential's role, agreement or party forbids it (403)
    └── TooManyAttempts             too many failed authentications from a client (429)

Messages never contain a raw identifier, a name or key material: callers
describe *where* a problem is (file, row, column) and *what was expected*,
never the offending value of a sensitive column.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar


class GatewayError(Exception):
    """Root of every error the gateway raises on purpose."""

    code: ClassVar[str] = "gateway_error"
    status: ClassVar[int] = 500
    exit_code: ClassVar[int] = 1

    def __init__(self, message: str, *, details: Sequence[Any] = ()) -> None:
        super().__init__(message)
        self.message = message
        self.details = list(details)

    def to_dict(self) -> dict[str, Any]:
        """The one JSON error body shared by the API and ``--json`` CLI output."""
        return {"error": {"code": self.code, "message": self.message, "details": self.details}}


class ConfigurationError(GatewayError):
    code = "configuration_error"
    status = 500
    exit_code = 3


class MasterKeyError(ConfigurationError):
    code = "master_key_error"


class NotInitialised(ConfigurationError):
    code = "not_initialised"


class AgreementInvalid(GatewayError):
    code = "agreement_invalid"
    status = 422
    exit_code = 4


class NotFound(GatewayError):
    code = "not_found"
    status = 404
    exit_code = 5


class PolicyViolation(GatewayError):
    code = "policy_violation"
    status = 403
    exit_code = 6


class SchemaError(GatewayError):
    code = "schema_error"
    status = 422
    exit_code = 7


class AuditChainBroken(GatewayError):
    code = "audit_chain_broken"
    status = 409
    exit_code = 8


class Unauthenticated(GatewayError):
    """No bearer token, or one that is unknown, expired or revoked (HTTP 401)."""

    code = "unauthenticated"
    status = 401
    exit_code = 12

    def __init__(
        self, message: str, *, details: Sequence[Any] = (), credential_id: str | None = None
    ) -> None:
        super().__init__(message, details=details)
        # For the audit log only (never in the response): the credential a failed
        # attempt named, when it exists, so guessing against one credential is traced.
        self.credential_id = credential_id


class AccessDenied(GatewayError):
    """A valid credential whose role, agreement or party does not allow this (HTTP 403)."""

    code = "access_denied"
    status = 403
    exit_code = 13


class TooManyAttempts(GatewayError):
    """Too many failed authentications from one client; try again later (HTTP 429)."""

    code = "too_many_attempts"
    status = 429
    exit_code = 14
