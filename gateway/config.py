"""Settings, read from ``GATEWAY_*`` environment variables or a ``.env`` file.

Nothing here touches the disk beyond reading ``.env``: the data folder,
database and master key are opened later by :mod:`gateway.context`, so tests
build their own settings and nothing happens at import time.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict, SettingsError

from gateway.errors import ConfigurationError

#: Default database file name inside the data folder.
SQLITE_FILE_NAME = "gateway.db"


class Settings(BaseSettings):
    """Every setting of the gateway; each is documented in docs/configuration.md."""

    model_config = SettingsConfigDict(
        env_prefix="GATEWAY_",
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
    )

    data_dir: Path = Field(
        default=Path("gateway-data"),
        description="Folder holding the SQLite database and the gateway's working files.",
    )
    database_url: str | None = Field(
        default=None,
        description=(
            "SQLAlchemy URL. Default: SQLite file inside the data folder. "
            "PostgreSQL: postgresql+psycopg://user@host/db."
        ),
    )
    master_key_file: Path | None = Field(
        default=None,
        description="Master key file (0600). Default: DATA_DIR/keys/master.key.",
    )
    signing_key_file: Path | None = Field(
        default=None,
        description=(
            "Ed25519 key signing audit checkpoints (0600). Default: DATA_DIR/keys/signing.key."
        ),
    )
    key_backend: Literal["file", "pkcs11"] = Field(
        default="file",
        description=(
            "Where the keys are kept: files (the default) or an HSM through PKCS#11 "
            "(the master key wrapped by a key inside it, the signing key inside it)."
        ),
    )
    pkcs11_module: Path | None = Field(
        default=None,
        description="PKCS#11 module (shared library) of the HSM; needed with pkcs11.",
    )
    pkcs11_token_label: str | None = Field(
        default=None, description="Label of the HSM token holding the keys; needed with pkcs11."
    )
    pkcs11_pin: SecretStr | None = Field(
        default=None, description="The token's user PIN (or GATEWAY_PKCS11_PIN_FILE)."
    )
    pkcs11_pin_file: Path | None = Field(
        default=None, description="File holding the token's user PIN (0600)."
    )
    pkcs11_signing_key_label: str = Field(
        default="gateway-audit-signing",
        min_length=1,
        description="Label of the Ed25519 audit signing key pair inside the token.",
    )
    agreements_dir: Path = Field(
        default=Path("agreements"), description="Folder of agreement YAML files."
    )
    policies_dir: Path = Field(
        default=Path("policies"),
        description="Folder of dataset schemas (datasets/) and disclosure profiles (profiles/).",
    )

    # A statewide extract of ten million rows is about 900 MB; an upload's memory does
    # not grow with the file (docs/uploads.md, "Large files"), so the caps are generous.
    max_upload_bytes: int = Field(
        default=2 * 1024 * 1024 * 1024, gt=0, description="Largest upload accepted, in bytes."
    )
    max_upload_rows: int = Field(
        default=20_000_000, gt=0, description="Most data rows accepted in one upload."
    )
    upload_chunk_rows: int = Field(
        default=100_000,
        gt=0,
        le=1_000_000,
        description="Rows read, validated and stored at a time (bounds upload memory).",
    )

    max_request_bytes: int = Field(
        default=1024 * 1024,
        gt=0,
        description="Largest request body accepted by the API, except uploads, in bytes.",
    )
    auth_failure_limit: int = Field(
        default=10,
        gt=0,
        description=(
            "Failed authentications one client may make within the window before its "
            "requests are refused with 429."
        ),
    )
    auth_failure_window_seconds: int = Field(
        default=300,
        gt=0,
        description="Window over which failed authentications are counted, in seconds.",
    )
    extract_download_hours: int = Field(
        default=72,
        gt=0,
        le=24 * 90,
        description="Hours an approved record-level extract may be downloaded (once).",
    )
    session_idle_seconds: int = Field(
        default=30 * 60,
        gt=0,
        description=(
            "A web session ends after this many seconds without a request (to within "
            "a minute, or a quarter of it when shorter)."
        ),
    )
    session_lifetime_seconds: int = Field(
        default=12 * 60 * 60,
        gt=0,
        description="A web session ends this many seconds after sign-in, however active.",
    )
    cors_origins: list[str] = Field(
        default_factory=list,
        description=(
            "Origins allowed to call the API from a browser (CORS), as a JSON list; "
            "empty (the default) turns CORS off."
        ),
    )

    # External anchors of the audit chain head (`gateway audit anchor`, docs/audit.md#anchors).
    anchor_destinations: list[str] = Field(
        default_factory=list,
        description=(
            "Where `gateway audit anchor` writes the signed chain head, as a JSON list of "
            "file:FOLDER, smtp:ADDRESS[,ADDRESS...] and tsa:URL (an RFC 3161 timestamp "
            "authority, which stamps the anchor before it is written)."
        ),
    )
    anchor_smtp_host: str | None = Field(default=None, description="SMTP server for smtp: anchors.")
    anchor_smtp_port: int = Field(default=587, gt=0, lt=65536, description="Its port.")
    anchor_smtp_security: Literal["starttls", "tls", "none"] = Field(
        default="starttls",
        description="starttls (port 587), tls (implicit TLS, port 465) or none (a local relay).",
    )
    anchor_smtp_ca_file: Path | None = Field(
        default=None,
        description="CA certificates (PEM) the SMTP server's certificate is checked against, "
        "instead of the system's (a relay with a private CA).",
    )
    anchor_smtp_from: str | None = Field(default=None, description="Sender of anchor emails.")
    anchor_smtp_user: str | None = Field(default=None, description="SMTP login, if needed.")
    anchor_smtp_password_file: Path | None = Field(
        default=None, description="File holding the SMTP password (read when sending)."
    )
    anchor_tsa_cert: Path | None = Field(
        default=None,
        description=(
            "The timestamp authority's certificate, or the one that issued it (PEM): "
            "checks its tokens when anchoring and verifying."
        ),
    )

    # Signing in through the organisation's OpenID provider (gateway/oidc.py,
    # docs/access.md); off while GATEWAY_OIDC_ISSUER is unset.
    oidc_issuer: str | None = Field(
        default=None,
        description=(
            "OpenID provider's issuer URL (https://...), exactly as its discovery document "
            "names it; unset (the default) turns single sign-on off."
        ),
    )
    oidc_client_id: str | None = Field(
        default=None, description="Client id the gateway is registered under at the provider."
    )
    oidc_client_secret: SecretStr | None = Field(
        default=None,
        description="Client secret (or GATEWAY_OIDC_CLIENT_SECRET_FILE); none for a public client.",
    )
    oidc_client_secret_file: Path | None = Field(
        default=None, description="File holding the client secret (0600)."
    )
    oidc_provider_name: str = Field(
        default="your organisation",
        min_length=1,
        description='Name on the sign-in button: "Sign in with <name>".',
    )
    oidc_scopes: str = Field(
        default="openid email profile",
        description="Scopes asked of the provider at sign-in (space-separated; openid first).",
    )
    oidc_mapping_file: Path | None = Field(
        default=None,
        description=(
            "Sign-in mapping (YAML): claims to role, party and agreements; needed with SSO."
        ),
    )
    oidc_api_audience: str | None = Field(
        default=None,
        description=(
            "Audience of the provider's access tokens the API accepts (the API's identifier "
            "there); unset: the API takes only the operator's tokens."
        ),
    )
    oidc_redirect_base: str | None = Field(
        default=None,
        description=(
            "The gateway's public address (https://gateway.example.org) for the sign-in "
            "callback; default: the address the request came to."
        ),
    )
    oidc_clock_leeway_seconds: int = Field(
        default=60,
        ge=0,
        le=300,
        description=(
            "Clock difference tolerated in a provider token's exp, iat and nbf, in seconds."
        ),
    )

    @field_validator("database_url")
    @classmethod
    def _known_database(cls, value: str | None) -> str | None:
        if value is None or value == "":
            return None
        if not value.startswith(("sqlite", "postgresql")):
            # Say what is supported rather than failing deep inside SQLAlchemy.
            raise ValueError(
                "GATEWAY_DATABASE_URL must start with sqlite:// or postgresql+psycopg://"
            )
        return value

    @property
    def resolved_database_url(self) -> str:
        """The database URL in force: the explicit one, or SQLite in the data folder."""
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / SQLITE_FILE_NAME).resolve()}"

    @property
    def resolved_signing_key_file(self) -> Path:
        if self.signing_key_file is not None:
            return self.signing_key_file
        return self.data_dir / "keys" / "signing.key"

    @property
    def resolved_master_key_file(self) -> Path:
        """The master key file; with the pkcs11 backend it holds the key wrapped."""
        if self.master_key_file is not None:
            return self.master_key_file
        if self.key_backend == "pkcs11":
            return self.data_dir / "keys" / "master.key.wrapped"
        return self.data_dir / "keys" / "master.key"


def load_settings(**overrides: object) -> Settings:
    """Build settings from the environment, with explicit overrides winning."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except SettingsError as exc:
        # A value that must be JSON (a list setting) and is not: name the variable.
        raise ConfigurationError(
            f"invalid settings: {exc} (list settings are JSON, for example "
            '["https://portal.example.org"])'
        ) from None
    except ValidationError as exc:
        # One line per the CLI contract: which variable, and what is wrong with it.
        reasons = "; ".join(
            f"GATEWAY_{'_'.join(str(p) for p in error['loc']).upper()}: {error['msg']}"
            for error in exc.errors()
        )
        raise ConfigurationError(f"invalid settings: {reasons}") from None
