"""Signing in through the organisation's OpenID provider (OpenID Connect).

A district's or university's staff sign in to the web pages with the identity provider
they already use (Microsoft Entra ID, Google Workspace, a Shibboleth bridge), and API
clients may present that provider's access tokens. The operator's sign-in mapping
(:func:`load_mapping`, docs/access.md) turns a person's claims (email domain, groups,
app roles) into a role, a party and agreements: a :class:`~gateway.credentials.Principal`,
exactly as an operator-issued token would. Nobody gets in without a rule that matches.

What is checked, through Authlib and its JOSE library (joserfc), never by hand:

- the web sign-in is the authorization code flow with PKCE (S256), ``state`` and
  ``nonce``, kept in a short-lived cookie encrypted under a key derived from the master
  key (:class:`SignInState`);
- an ID token: signature by a key of the provider's JWKS, an algorithm of
  :data:`ALGORITHMS` (never ``none`` or HMAC, which a public client secret could forge),
  issuer, audience (this client), ``azp``, ``nonce``, ``at_hash``, ``exp``/``iat``/``nbf``
  within ``GATEWAY_OIDC_CLOCK_LEEWAY_SECONDS``;
- an access token (a JWT, RFC 9068): the same signature and time checks, the issuer,
  and an audience of ``GATEWAY_OIDC_API_AUDIENCE``, which must differ from the client id
  so that an ID token is never taken for an access token.

The provider's JWKS is fetched once and kept; a token signed by a key id it does not
hold makes it fetch the JWKS again (at most once a second), which is how a provider's
key rotation reaches the gateway, and how a removed key stops being accepted. The set
is also fetched again when it is an hour old.

A person acts in the audit log as ``oidc_`` and 24 hex digits: HMAC-SHA-256 of the
issuer and subject under a key derived from the master key (:func:`subject_id`). Never
an email or a name; and keyed, because a provider's ``sub`` is not secret (Google's is
the same for every application), so a plain hash would let anyone who knows it find that
person's events in an exported log. The operator, who holds the master key, can still
answer "what did this person do".
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode, urlsplit

import httpx2
import yaml
from authlib.integrations.httpx_client import OAuth2Client
from authlib.oidc.core import CodeIDToken
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from joserfc import jws, jwt
from joserfc.errors import ExpiredTokenError, JoseError
from joserfc.jwk import KeySet
from joserfc.jwt import JWTClaimsRegistry

from gateway.credentials import ROLES, Principal
from gateway.errors import ConfigurationError, GatewayError, Unauthenticated
from gateway.keys import MasterKey
from gateway.pseudonym import hkdf_sha256, hmac_sha256

if TYPE_CHECKING:
    from gateway.agreements import Registry
    from gateway.config import Settings
    from gateway.context import Gateway

#: Signature algorithms accepted from a provider: asymmetric only. ``none`` and the
#: HMAC family are refused: a client secret is shared, so it cannot prove the provider.
ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA")
#: The prefix of an OIDC person's credential id in the audit log.
SUBJECT_PREFIX = "oidc_"
_SUBJECT_INFO = b"teacher-gateway/oidc-subject/v1"
_STATE_INFO = b"teacher-gateway/oidc-sign-in-state/v1"
#: How long a sign-in at the provider may take, from the gateway's redirect to its return.
SIGN_IN_SECONDS = 10 * 60
_JWKS_MAX_AGE = 3600.0
_JWKS_MIN_REFETCH = 1.0
_HTTP_TIMEOUT = 10.0


class OidcError(Unauthenticated):
    """A sign-in or token from the provider that is not accepted (HTTP 401).

    The message says what failed (audience, expiry, signature...) and never repeats a
    token or a claim value.
    """


# --- who a person is in the audit log ------------------------------------------------------


def subject_id(master_key: MasterKey, issuer: str, subject: str) -> str:
    """The credential id an OIDC person acts under: stable, keyed, with no name in it."""
    key = hkdf_sha256(ikm=master_key.material, salt=None, info=_SUBJECT_INFO, length=32)
    digest = hmac_sha256(key, issuer.encode("utf-8") + b"\x00" + subject.encode("utf-8"))
    return SUBJECT_PREFIX + digest[:12].hex()


# --- the sign-in mapping -------------------------------------------------------------------


@dataclass(frozen=True)
class Rule:
    """One rule of the mapping: when every condition holds, grant a role and a party."""

    index: int
    email_domain: str | None
    group: str | None
    app_role: str | None
    role: str
    party: str | None
    agreements: tuple[str, ...]

    def matches(self, claims: Mapping[str, Any]) -> bool:
        if self.email_domain is not None and claims.get("email_domain") != self.email_domain:
            return False
        if self.group is not None and self.group not in claims.get("groups", ()):
            return False
        return self.app_role is None or self.app_role in claims.get("roles", ())


@dataclass(frozen=True)
class SignInMapping:
    """The sign-in mapping: which claims hold groups and roles, and the rules in order."""

    groups_claim: str
    roles_claim: str
    rules: tuple[Rule, ...]

    def first_match(self, claims: Mapping[str, Any]) -> Rule | None:
        return next((rule for rule in self.rules if rule.matches(claims)), None)


_CONDITIONS = ("email_domain", "group", "role")
_GRANT_FIELDS = ("role", "party", "agreements")


def _problem(path: Path, where: str, message: str) -> ConfigurationError:
    return ConfigurationError(f"sign-in mapping {path}: {where}: {message}")


def _text(path: Path, where: str, value: object) -> str:
    if not isinstance(value, str) or not value.strip():
        raise _problem(path, where, "expected a non-empty text")
    return value.strip()


def load_mapping(path: Path, registry: Registry) -> SignInMapping:
    """Read and check the sign-in mapping file against the loaded agreements.

    Every problem names the file, the rule (``rules[2].grant.party``) and what was
    expected; the gateway does not start with a mapping it cannot honour.
    """
    try:
        document = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise ConfigurationError(
            f"sign-in mapping {path}: cannot be read ({error.strerror}); "
            "set GATEWAY_OIDC_MAPPING_FILE to the rules file"
        ) from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        line = f"line {mark.line + 1}: " if mark is not None else ""
        raise ConfigurationError(f"sign-in mapping {path}: {line}not valid YAML") from None
    if not isinstance(document, dict):
        raise _problem(path, "top level", "expected a mapping with `rules:`")
    unknown = set(document) - {"claims", "rules"}
    if unknown:
        raise _problem(
            path, "top level", f"unknown key(s) {sorted(unknown)}; expected claims, rules"
        )
    claims = document.get("claims") or {}
    if not isinstance(claims, dict) or set(claims) - {"groups", "roles"}:
        raise _problem(path, "claims", "expected `groups:` and/or `roles:` claim names")
    groups_claim = _text(path, "claims.groups", claims.get("groups", "groups"))
    roles_claim = _text(path, "claims.roles", claims.get("roles", "roles"))
    raw_rules = document.get("rules")
    if not isinstance(raw_rules, list) or not raw_rules:
        raise _problem(path, "rules", "expected a list of at least one rule")
    rules = tuple(_rule(path, i, raw, registry) for i, raw in enumerate(raw_rules))
    return SignInMapping(groups_claim=groups_claim, roles_claim=roles_claim, rules=rules)


def _rule(path: Path, index: int, raw: object, registry: Registry) -> Rule:
    where = f"rules[{index}]"
    if not isinstance(raw, dict) or set(raw) != {"when", "grant"}:
        raise _problem(path, where, "expected `when:` (conditions) and `grant:` (role, party...)")
    when, grant = raw["when"], raw["grant"]
    if not isinstance(when, dict) or not when or set(when) - set(_CONDITIONS):
        raise _problem(path, f"{where}.when", f"expected one or more of {', '.join(_CONDITIONS)}")
    conditions = {k: _text(path, f"{where}.when.{k}", v) for k, v in when.items()}
    if not isinstance(grant, dict) or set(grant) - set(_GRANT_FIELDS) or "role" not in grant:
        raise _problem(
            path, f"{where}.grant", "expected role, party (not for reviewers), agreements"
        )
    role = _text(path, f"{where}.grant.role", grant["role"])
    if role not in ROLES:
        raise _problem(path, f"{where}.grant.role", f"unknown role; roles: {', '.join(ROLES)}")
    party = grant.get("party")
    party = None if party is None else _text(path, f"{where}.grant.party", party)
    agreements = grant.get("agreements")
    if isinstance(agreements, str):
        agreements = [agreements]
    if not isinstance(agreements, list) or not agreements:
        raise _problem(path, f"{where}.grant.agreements", "expected a list of agreement ids")
    ids = tuple(dict.fromkeys(_text(path, f"{where}.grant.agreements", a) for a in agreements))
    if role == "reviewer":
        if party is not None:
            raise _problem(path, f"{where}.grant.party", "a reviewer acts for no party")
    else:
        if party is None:
            raise _problem(path, f"{where}.grant.party", f"a {role} needs the party it acts for")
        if len(ids) != 1:
            raise _problem(
                path, f"{where}.grant.agreements", f"a {role} covers exactly one agreement"
            )
    for agreement_id in ids:
        agreement = registry.agreements.get(agreement_id)
        if agreement is None:
            raise _problem(
                path,
                f"{where}.grant.agreements",
                f"no loaded agreement {agreement_id!r} (see `gateway agreements list`)",
            )
        if party is not None:
            parties = [p.id for p in agreement.parties]
            if party not in parties:
                raise _problem(
                    path,
                    f"{where}.grant.party",
                    f"{party!r} is not a party of {agreement_id!r}; parties: {', '.join(parties)}",
                )
    return Rule(
        index=index,
        email_domain=conditions.get("email_domain", "").lower() or None,
        group=conditions.get("group"),
        app_role=conditions.get("role"),
        role=role,
        party=party,
        agreements=ids,
    )


# The mapping file is read again when it changes (size or time), so an operator who
# removes a rule ends the matching sessions at their next request, without a restart.
_mapping_cache: dict[Path, tuple[tuple[int, int], int, SignInMapping]] = {}
_mapping_lock = threading.Lock()


def current_mapping(gateway: Gateway) -> SignInMapping:
    """The gateway's sign-in mapping as its file reads now (ConfigurationError if none)."""
    path = gateway.settings.oidc_mapping_file
    if path is None:
        raise ConfigurationError("GATEWAY_OIDC_MAPPING_FILE is not set")
    try:
        stat = path.stat()
    except OSError:
        raise ConfigurationError(f"sign-in mapping {path}: cannot be read") from None
    stamp = (stat.st_mtime_ns, stat.st_size)
    with _mapping_lock:
        cached = _mapping_cache.get(path)
        if cached is not None and cached[0] == stamp and cached[1] == id(gateway.registry):
            return cached[2]
    mapping = load_mapping(path, gateway.registry)
    with _mapping_lock:
        _mapping_cache[path] = (stamp, id(gateway.registry), mapping)
    return mapping


def mapping_claims(claims: Mapping[str, Any], mapping: SignInMapping) -> dict[str, Any]:
    """What the mapping reads of a person's claims, and nothing more: issuer, subject,
    the email's domain (only when the provider says the address is verified), groups
    and app roles. Safe to keep with a session: no name, no email address."""
    if set(claims) == _KEPT:  # already reduced (a session's stored claims)
        return dict(claims)
    email = claims.get("email")
    domain = None
    # Some providers (Amazon Cognito) send the boolean as the string "true".
    verified = claims.get("email_verified") in (True, "true")
    if isinstance(email, str) and "@" in email and verified:
        domain = email.rsplit("@", 1)[1].lower()
    return {
        "iss": str(claims.get("iss", "")),
        "sub": str(claims.get("sub", "")),
        "email_domain": domain,
        "groups": _strings(claims.get(mapping.groups_claim, claims.get("groups"))),
        "roles": _strings(claims.get(mapping.roles_claim, claims.get("roles"))),
    }


_KEPT = frozenset({"iss", "sub", "email_domain", "groups", "roles"})


def _strings(value: object) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return sorted({v for v in value if isinstance(v, str)})
    return []


def principal_from_claims(
    gateway: Gateway, claims: Mapping[str, Any], *, today: date | None = None
) -> Principal | None:
    """The principal a signed-in person acts as, or None when no rule matches.

    ``claims`` are a validated ID token's or access token's claims, or what
    :func:`mapping_claims` kept of them (a session stores that and asks again on every
    request, so a rule removed from the mapping ends the session at once). A party's
    rule stops matching once its agreement has ended, as a party's token expires.
    """
    mapping = current_mapping(gateway)
    kept = mapping_claims(claims, mapping)
    if not kept["iss"] or not kept["sub"]:
        return None
    rule = mapping.first_match(kept)
    if rule is None:
        return None
    if rule.party is not None:
        today = today or datetime.now(UTC).date()
        agreement = gateway.registry.agreements.get(rule.agreements[0])
        if agreement is None or agreement.ends < today:
            return None
    return Principal(
        credential_id=subject_id(gateway.master_key, kept["iss"], kept["sub"]),
        role=rule.role,
        party=rule.party,
        agreements=frozenset(rule.agreements),
    )


# --- the provider --------------------------------------------------------------------------


@dataclass
class _KeyCache:
    keys: KeySet | None = None
    kids: frozenset[str] = frozenset()
    fetched_at: float = 0.0
    tried_at: float = -1e9
    lock: threading.Lock = field(default_factory=threading.Lock)


def _secret(settings: Settings) -> str | None:
    if settings.oidc_client_secret is not None:
        return settings.oidc_client_secret.get_secret_value()
    if settings.oidc_client_secret_file is not None:
        try:
            return settings.oidc_client_secret_file.read_text(encoding="utf-8").strip()
        except OSError as error:
            raise ConfigurationError(
                f"GATEWAY_OIDC_CLIENT_SECRET_FILE: cannot read {settings.oidc_client_secret_file}"
                f" ({error.strerror})"
            ) from None
    return None


class OidcProvider:
    """The configured OpenID provider: its metadata and keys, fetched when first needed
    and kept; the flows and token checks the gateway uses."""

    def __init__(self, settings: Settings) -> None:
        if not settings.oidc_issuer or not settings.oidc_client_id:
            raise ConfigurationError("GATEWAY_OIDC_ISSUER and GATEWAY_OIDC_CLIENT_ID are needed")
        self.issuer: str = settings.oidc_issuer
        self.client_id: str = settings.oidc_client_id
        self.client_secret = _secret(settings)
        self.name = settings.oidc_provider_name
        self.scopes = settings.oidc_scopes
        self.api_audience = settings.oidc_api_audience
        self.redirect_base = settings.oidc_redirect_base
        self.leeway = settings.oidc_clock_leeway_seconds
        self._metadata: dict[str, Any] | None = None
        self._metadata_lock = threading.Lock()
        self._keys = _KeyCache()

    # metadata and keys

    def _get_json(self, url: str) -> dict[str, Any]:
        try:
            response = httpx2.get(url, timeout=_HTTP_TIMEOUT, follow_redirects=False)
            response.raise_for_status()
            value = response.json()
        except (httpx2.HTTPError, ValueError) as error:
            raise OidcError(
                f"the identity provider could not be reached ({type(error).__name__}); "
                "try again, or ask the operator"
            ) from None
        if not isinstance(value, dict):
            raise OidcError("the identity provider answered with something other than JSON")
        return value

    @property
    def metadata(self) -> dict[str, Any]:
        """The provider's discovery document (OpenID Connect Discovery 1.0), checked to
        name the configured issuer."""
        with self._metadata_lock:
            if self._metadata is None:
                url = self.issuer.rstrip("/") + "/.well-known/openid-configuration"
                metadata = self._get_json(url)
                if metadata.get("issuer") != self.issuer:
                    raise OidcError(
                        "the identity provider's discovery document names another issuer "
                        "than GATEWAY_OIDC_ISSUER"
                    )
                self._metadata = metadata
            return self._metadata

    def _id_token_algorithms(self) -> list[str]:
        """Those of :data:`ALGORITHMS` the provider says it signs ID tokens with."""
        advertised = self.metadata.get("id_token_signing_alg_values_supported") or ALGORITHMS
        return [alg for alg in ALGORITHMS if alg in advertised] or list(ALGORITHMS)

    def _key_set(self, kid: str | None) -> KeySet:
        """The provider's keys, fetched again when a token names a key id not held (a
        rotation) or the set is an hour old."""
        cache = self._keys
        with cache.lock:
            now = time.monotonic()
            stale = cache.keys is None or now - cache.fetched_at > _JWKS_MAX_AGE
            unknown = kid is not None and kid not in cache.kids
            # At most one fetch a second, failed ones included: tokens naming made-up
            # key ids cannot make the gateway hammer the provider.
            due = now - cache.tried_at >= _JWKS_MIN_REFETCH
            if (stale or unknown) and (due or cache.keys is None):
                cache.tried_at = now
                uri = self.metadata.get("jwks_uri")
                if not isinstance(uri, str):
                    raise OidcError("the identity provider publishes no jwks_uri")
                try:
                    keys = KeySet.import_key_set(self._get_json(uri))  # type: ignore[arg-type]
                except (JoseError, ValueError, TypeError):
                    raise OidcError("the identity provider's key set could not be read") from None
                cache.keys = keys
                cache.kids = frozenset(k.kid for k in keys.keys if k.kid)
                cache.fetched_at = now
            assert cache.keys is not None
            if kid is not None and kid not in cache.kids:
                raise OidcError(
                    "the token is signed by a key the identity provider does not publish"
                )
            return cache.keys

    def _decode(self, token: str, what: str, algorithms: Sequence[str]) -> jwt.Token:
        try:
            header = jws.extract_compact(token.encode("ascii")).protected
        except (JoseError, ValueError, UnicodeEncodeError):
            raise OidcError(f"the {what} is not a signed JWT") from None
        if header.get("alg") not in algorithms:
            raise OidcError(f"the {what} is signed with an algorithm the gateway refuses")
        kid = header.get("kid")
        keys = self._key_set(kid if isinstance(kid, str) else None)
        try:
            return jwt.decode(token, keys, algorithms=list(algorithms))
        except JoseError:
            raise OidcError(
                f"the {what}'s signature does not verify with the identity provider's keys"
            ) from None

    # ID tokens (the web sign-in)

    def validate_id_token(
        self, id_token: str, *, nonce: str, access_token: str | None = None
    ) -> dict[str, Any]:
        """The claims of a valid ID token for this client and this sign-in's nonce."""
        token = self._decode(id_token, "ID token", self._id_token_algorithms())
        claims = CodeIDToken(
            token.claims,
            token.header,
            {
                "iss": {"essential": True, "value": self.issuer},
                "aud": {"essential": True, "value": self.client_id},
                "sub": {"essential": True},
                "exp": {"essential": True},
                "iat": {"essential": True},
                "nonce": {"essential": True},
            },
            {"nonce": nonce, "client_id": self.client_id, "access_token": access_token},
        )
        try:
            claims.validate(leeway=self.leeway)
        except ExpiredTokenError:
            raise OidcError("the ID token has expired") from None
        except JoseError as error:
            raise OidcError(f"the ID token is not valid: {_claim_problem(error)}") from None
        return dict(claims)

    # access tokens (the API)

    def validate_access_token(self, access_token: str) -> dict[str, Any]:
        """The claims of a valid access token (a JWT) for the gateway's API."""
        if not self.api_audience:
            raise OidcError("the gateway accepts no identity provider access tokens")
        # Access tokens' algorithm is not in the discovery document: any of ours.
        token = self._decode(access_token, "access token", ALGORITHMS)
        registry = JWTClaimsRegistry(
            leeway=self.leeway,
            iss={"essential": True, "value": self.issuer},
            aud={"essential": True, "value": self.api_audience},
            sub={"essential": True},
            exp={"essential": True},
        )
        try:
            registry.validate(token.claims)
        except ExpiredTokenError:
            raise OidcError("the access token has expired") from None
        except JoseError as error:
            raise OidcError(f"the access token is not valid: {_claim_problem(error)}") from None
        return token.claims

    # the authorization code flow

    def client(self, redirect_uri: str) -> OAuth2Client:
        return OAuth2Client(
            client_id=self.client_id,
            client_secret=self.client_secret,
            token_endpoint_auth_method="client_secret_basic" if self.client_secret else "none",
            scope=self.scopes,
            redirect_uri=redirect_uri,
            code_challenge_method="S256",
            timeout=_HTTP_TIMEOUT,
        )

    def authorization_url(self, redirect_uri: str, state: SignInState) -> str:
        """Where to send the browser: the provider's sign-in, with state, nonce and PKCE."""
        with self.client(redirect_uri) as client:
            url, _ = client.create_authorization_url(
                self.metadata["authorization_endpoint"],
                state=state.state,
                nonce=state.nonce,
                code_verifier=state.verifier,
            )
        return str(url)

    def exchange(self, redirect_uri: str, code: str, state: SignInState) -> dict[str, Any]:
        """Trade the code for tokens (with the PKCE verifier) and return the ID token's
        validated claims."""
        try:
            with self.client(redirect_uri) as client:
                tokens = client.fetch_token(
                    self.metadata["token_endpoint"],
                    grant_type="authorization_code",
                    code=code,
                    code_verifier=state.verifier,
                )
        except GatewayError:
            raise
        except Exception as error:  # Authlib's OAuthError, httpx errors: say which, no body
            raise OidcError(
                f"the identity provider refused the sign-in code ({type(error).__name__})"
            ) from None
        id_token = tokens.get("id_token")
        if not isinstance(id_token, str):
            raise OidcError("the identity provider returned no ID token (is `openid` a scope?)")
        access = tokens.get("access_token")
        return self.validate_id_token(
            id_token, nonce=state.nonce, access_token=access if isinstance(access, str) else None
        )

    def logout_url(self, post_logout_redirect_uri: str) -> str | None:
        """The provider's end-session address (RP-initiated logout), if it has one."""
        try:
            endpoint = self.metadata.get("end_session_endpoint")
        except OidcError:
            return None
        # Only on the issuer's own site: the pages' forms may lead nowhere else (CSP).
        if not isinstance(endpoint, str) or _origin(endpoint) != _origin(self.issuer):
            return None
        separator = "&" if "?" in endpoint else "?"
        query = urlencode(
            {"client_id": self.client_id, "post_logout_redirect_uri": post_logout_redirect_uri}
        )
        return f"{endpoint}{separator}{query}"


def _claim_problem(error: JoseError) -> str:
    """Which claim failed (aud, iss, nonce...), never its value."""
    claim = getattr(error, "claim", None) or str(error.error)
    return f"{error.error} ({claim})" if claim != error.error else str(error.error)


# --- the sign-in's state, kept by the browser ----------------------------------------------


@dataclass(frozen=True)
class SignInState:
    """What the callback must see again: state, nonce and PKCE verifier, and when the
    sign-in started. Kept in a cookie, encrypted and authenticated (AES-GCM) under a key
    derived from the master key, so the browser can neither read the verifier nor
    change any of it."""

    state: str
    nonce: str
    verifier: str
    started: float

    @classmethod
    def new(cls) -> SignInState:
        return cls(
            state=secrets.token_urlsafe(24),
            nonce=secrets.token_urlsafe(24),
            verifier=secrets.token_urlsafe(48),
            started=time.time(),
        )

    def seal(self, master_key: MasterKey) -> str:
        body = json.dumps(
            {"s": self.state, "n": self.nonce, "v": self.verifier, "t": self.started}
        ).encode("utf-8")
        iv = os.urandom(12)
        sealed = AESGCM(_state_key(master_key)).encrypt(iv, body, _STATE_INFO)
        return base64.urlsafe_b64encode(iv + sealed).decode("ascii").rstrip("=")

    @classmethod
    def open(cls, master_key: MasterKey, sealed: str | None) -> SignInState | None:
        """The state the cookie holds, or None if it is missing, forged or too old."""
        if not sealed or len(sealed) > 1024:
            return None
        try:
            raw = base64.urlsafe_b64decode(sealed + "=" * (-len(sealed) % 4))
            body = AESGCM(_state_key(master_key)).decrypt(raw[:12], raw[12:], _STATE_INFO)
            value = json.loads(body)
            state = cls(value["s"], value["n"], value["v"], float(value["t"]))
        except Exception:  # any damage at all: not this gateway's cookie
            return None
        if not 0 <= time.time() - state.started <= SIGN_IN_SECONDS:
            return None
        return state


def _state_key(master_key: MasterKey) -> bytes:
    return hkdf_sha256(ikm=master_key.material, salt=None, info=_STATE_INFO, length=32)


# --- configuration checks ------------------------------------------------------------------


def check_settings(settings: Settings) -> list[str]:
    """What is wrong with the OIDC settings (empty when OIDC is off or complete)."""
    if not settings.oidc_issuer:
        return []
    problems = []
    issuer = urlsplit(settings.oidc_issuer)
    loopback = issuer.hostname in ("127.0.0.1", "::1", "localhost")
    if issuer.scheme != "https" and not (issuer.scheme == "http" and loopback):
        problems.append("GATEWAY_OIDC_ISSUER: expected an https:// address")
    if not settings.oidc_client_id:
        problems.append("GATEWAY_OIDC_CLIENT_ID: needed with GATEWAY_OIDC_ISSUER")
    if settings.oidc_mapping_file is None:
        problems.append("GATEWAY_OIDC_MAPPING_FILE: needed with GATEWAY_OIDC_ISSUER")
    if settings.oidc_api_audience and settings.oidc_api_audience == settings.oidc_client_id:
        problems.append(
            "GATEWAY_OIDC_API_AUDIENCE: must differ from GATEWAY_OIDC_CLIENT_ID (an ID "
            "token's audience), or an ID token would pass for an access token"
        )
    return problems


def start(settings: Settings, registry: Registry) -> OidcProvider | None:
    """The configured provider, or None when single sign-on is off. Refuses (at the
    server's start) incomplete settings and a mapping that names an unknown agreement,
    party or role. The provider itself is first asked at the first sign-in: a provider
    that is down delays sign-ins, not the gateway."""
    check_mapping(settings, registry)
    return OidcProvider(settings) if settings.oidc_issuer else None


def check_mapping(settings: Settings, registry: Registry) -> SignInMapping | None:
    """The settings checked, and the mapping loaded against these agreements (at start
    and in `gateway agreements check`); None when single sign-on is off."""
    problems = check_settings(settings)
    if problems:
        raise ConfigurationError("invalid settings: " + "; ".join(problems))
    if not settings.oidc_issuer or settings.oidc_mapping_file is None:
        return None
    return load_mapping(settings.oidc_mapping_file, registry)


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def form_action_origins(settings: Settings) -> list[str]:
    """Origins the pages' forms may lead to besides the gateway: the provider's, whose
    sign-out the gateway's sign-out redirects to (none when single sign-on is off)."""
    return [_origin(settings.oidc_issuer)] if settings.oidc_issuer else []


__all__: Sequence[str] = (
    "ALGORITHMS",
    "OidcError",
    "OidcProvider",
    "SignInMapping",
    "SignInState",
    "check_mapping",
    "check_settings",
    "current_mapping",
    "form_action_origins",
    "load_mapping",
    "mapping_claims",
    "principal_from_claims",
    "start",
    "subject_id",
)
