"""JWT at the door: ``fws_server -f jwt_auth broadcast_messages --jwt-secret S``.

A connect filter that lets a client upgrade only with a valid JSON Web Token,
verified by PyJWT (signature, ``exp``, ``nbf``, ``iat``, audience, issuer).
Anyone else gets HTTP 401 with a one-line reason and never holds an open
WebSocket. On success the connection gets ``claims`` (the token's claims) and
``user`` (its ``sub``), and is closed with 1008 "token expired" when the
token's ``exp`` passes.

The token is looked for in this order, and the *first source present* is the
only one checked (a bad token is never rescued by another one further down)::

    Authorization: Bearer <token>        the header
    ?token=<token>                       the query parameter
    Cookie: <name>=<token>               only with a cookie name (--jwt-cookie)
    Sec-WebSocket-Protocol: bearer.<token>   browsers cannot set headers

The filter needs settings: ``JwtAuth(JwtSettings(secret=...))`` in a script,
``--jwt-secret``/``--jwt-key-file`` on the command line. ``JwtAuth()`` with
none raises ``ConfigurationError``, so a server never starts letting everyone
in. Neither the reasons nor anything this module logs contain the token.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jwt
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from fws.datatypes import Request, bearer_token
from fws.errors import ConfigurationError, Reject
from fws.events import WebSocketConnectFilter

if TYPE_CHECKING:
    from fws.connection import Connection

__all__ = ["JwtAuth", "JwtSettings", "find_token", "load_public_key"]

HMAC_ALGORITHMS = frozenset({"HS256", "HS384", "HS512"})
_FAMILIES: dict[str, frozenset[str]] = {
    "RSA": frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"}),
    "EC": frozenset({"ES256", "ES256K", "ES384", "ES512"}),
    "EdDSA": frozenset({"EdDSA"}),
}
# Without --jwt-algorithms a key verifies the one algorithm that fits it.
_DEFAULTS = {"RSA": "RS256", "EdDSA": "EdDSA"}
_NEVER = 100 * 365 * 86400.0
"""Seconds beyond which a token's exp arms no close timer (libev's own limits)."""

_EC_DEFAULTS = {
    "secp256r1": "ES256",
    "secp256k1": "ES256K",
    "secp384r1": "ES384",
    "secp521r1": "ES512",
}


def load_public_key(path: str | Path) -> PublicKeyTypes:
    """The public key in a PEM file (a public key or a certificate).

    Raises ``ConfigurationError`` naming the file when it is missing,
    unreadable, a private key, or no key at all.
    """
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise ConfigurationError(f"JWT key file not found: {path}") from None
    except OSError as exc:
        raise ConfigurationError(f"JWT key file {path} is not readable: {exc.strerror}") from None
    try:
        return _public_key(data)
    except ValueError as exc:
        raise ConfigurationError(f"JWT key file {path}: {exc}") from None


def _public_key(pem: bytes) -> PublicKeyTypes:
    if b"PRIVATE KEY" in pem:
        # The server only verifies; its private key has no business here.
        raise ValueError("holds a private key; give the public key (openssl pkey -pubout)")
    try:
        return load_pem_public_key(pem)
    except ValueError:
        pass
    try:
        return x509.load_pem_x509_certificate(pem).public_key()
    except ValueError:
        raise ValueError("not a PEM public key or certificate") from None


def _family(key: PublicKeyTypes) -> str:
    if isinstance(key, rsa.RSAPublicKey):
        return "RSA"
    if isinstance(key, ec.EllipticCurvePublicKey):
        return "EC"
    if isinstance(key, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey):
        return "EdDSA"
    raise ValueError(f"a {type(key).__name__} cannot verify JWTs (RSA, EC or Ed25519 keys can)")


@dataclass(frozen=True)
class JwtSettings:
    """What ``JwtAuth`` accepts. Give exactly one of ``secret`` and ``public_key``.

    ``secret``: the shared HMAC secret (algorithms default to HS256).
    ``public_key``: PEM text or bytes (a public key or certificate), or a
    ``cryptography`` public key; algorithms default to the one of RS256,
    ES256 (ES384/ES512 for those curves) or EdDSA that fits the key.
    ``algorithms``: the only ones a token may use. HMAC algorithms with a
    public key are refused: anyone holding the public key could then sign
    tokens (algorithm confusion). ``audience``/``issuer``: ``None`` means
    not checked, yet a token that carries ``aud`` is refused without an
    ``audience`` (PyJWT's rule). ``leeway``: seconds of clock skew allowed
    on ``exp``/``nbf``/``iat``. ``cookie``: a cookie name to read the token
    from; ``None``: cookies are not looked at.

    Raises ``ConfigurationError`` for a combination that cannot be safe.
    """

    secret: str | bytes | None = field(default=None, repr=False)
    public_key: Any = None
    algorithms: tuple[str, ...] = ()
    audience: str | None = None
    issuer: str | None = None
    leeway: float = 0.0
    cookie: str | None = None

    def __post_init__(self) -> None:
        if (self.secret is None) == (self.public_key is None):
            raise ConfigurationError(
                "jwt_auth needs a secret (--jwt-secret) or a public key (--jwt-key-file), "
                "not both and not neither"
            )
        if self.secret is not None and not self.secret:
            raise ConfigurationError("the JWT secret is empty")
        if self.leeway < 0:
            raise ConfigurationError("the JWT leeway must be 0 or more seconds")
        key, allowed, defaults = self._key_and_algorithms()
        algorithms = tuple(dict.fromkeys(self.algorithms)) or defaults
        for name in algorithms:
            if name not in jwt.algorithms.get_default_algorithms() or name == "none":
                raise ConfigurationError(f"unknown or unsafe JWT algorithm {name!r}")
            if self.public_key is not None and name in HMAC_ALGORITHMS:
                raise ConfigurationError(
                    f"JWT algorithm {name} with a public key is refused: anyone holding the "
                    "public key could sign tokens (algorithm confusion); use RS256, ES256 "
                    "or EdDSA, or --jwt-secret for HMAC"
                )
            if name not in allowed:
                kind = "an HMAC secret" if self.secret is not None else "this public key"
                raise ConfigurationError(
                    f"JWT algorithm {name} cannot be verified with {kind}; "
                    f"allowed: {', '.join(sorted(allowed))}"
                )
        object.__setattr__(self, "public_key", key)
        object.__setattr__(self, "algorithms", algorithms)

    def _key_and_algorithms(self) -> tuple[Any, frozenset[str], tuple[str, ...]]:
        """The verification key, the algorithms it can verify, and the defaults."""
        if self.secret is not None:
            return None, HMAC_ALGORITHMS, ("HS256",)
        key = self.public_key
        try:
            if isinstance(key, str | bytes):
                key = _public_key(key.encode() if isinstance(key, str) else key)
            family = _family(key)
        except ValueError as exc:
            raise ConfigurationError(f"JWT public key: {exc}") from None
        if isinstance(key, ec.EllipticCurvePublicKey):
            default = _EC_DEFAULTS.get(key.curve.name)
            if default is None:
                raise ConfigurationError(f"JWT public key: curve {key.curve.name} is not usable")
        else:
            default = _DEFAULTS[family]
        return key, _FAMILIES[family], (default,)

    @property
    def verification_key(self) -> Any:
        return self.secret if self.secret is not None else self.public_key


# PyJWT's exception -> the reason the client reads. Subclasses come first.
_REASONS: tuple[tuple[type[Exception], str], ...] = (
    (jwt.ExpiredSignatureError, "token expired"),
    (jwt.ImmatureSignatureError, "token not yet valid"),
    (jwt.InvalidAudienceError, "invalid audience"),
    (jwt.InvalidIssuerError, "invalid issuer"),
    (jwt.InvalidSignatureError, "invalid signature"),
    (jwt.InvalidAlgorithmError, "token algorithm not allowed"),
    (jwt.DecodeError, "malformed token"),
)


def _reason(exc: jwt.PyJWTError) -> str:
    if isinstance(exc, jwt.MissingRequiredClaimError):
        return {"aud": "invalid audience", "iss": "invalid issuer"}.get(
            exc.claim, f"missing {exc.claim} claim"
        )
    for kind, reason in _REASONS:
        if isinstance(exc, kind):
            return reason
    return "invalid token"


def _cookies(header: str) -> Iterable[tuple[str, str]]:
    # Not http.cookies: one malformed cookie makes SimpleCookie drop the rest.
    # Repeated Cookie headers arrive joined with ", ".
    for part in header.replace(",", ";").split(";"):
        name, sep, value = part.strip().partition("=")
        if sep:
            yield name.strip(), value.strip().strip('"')


def find_token(request: Request, cookie: str | None = None) -> str | None:
    """The token of the first source present, in the documented order; None if none."""
    scheme, _, credentials = request.headers.get("authorization", "").strip().partition(" ")
    if scheme.lower() == "bearer":
        return credentials.strip()
    query = request.query
    if "token" in query:
        return query["token"]
    if cookie is not None:
        for name, value in _cookies(request.headers.get("cookie", "")):
            if name == cookie:
                return value
    for offer in request.subprotocols:
        token = bearer_token(offer)
        if token is not None:
            return token
    return None


class JwtAuth(WebSocketConnectFilter):
    """Refuse the handshake (401) unless the request carries a valid JWT.

    ``settings``: what to accept; ``None`` raises ``ConfigurationError``, so
    that a server without a key refuses to start rather than admit anyone.
    """

    def __init__(self, settings: JwtSettings | None = None) -> None:
        if settings is None:
            raise ConfigurationError(
                "jwt_auth needs --jwt-secret or --jwt-key-file "
                "(in a script: JwtAuth(JwtSettings(secret=...)))"
            )
        self.settings = settings

    def claims(self, request: Request) -> dict[str, Any]:
        """The verified claims of the request's token, or ``Reject(401, reason)``."""
        settings = self.settings
        token = find_token(request, settings.cookie)
        if token is None:
            raise Reject(401, "no token")
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                settings.verification_key,
                algorithms=list(settings.algorithms),
                audience=settings.audience,
                issuer=settings.issuer,
                leeway=settings.leeway,
            )
        except jwt.PyJWTError as exc:
            # Never the exception's text: the reason is all the client and the log get.
            raise Reject(401, _reason(exc)) from None
        return claims

    def filter(self, connection: Connection, request: Request) -> None:
        claims = self.claims(request)
        connection.claims = claims
        connection.user = claims.get("sub")
        if "exp" in claims:
            # Good until exp + leeway, as at the door; then the client must
            # reconnect with a fresh token. PyJWT checked exp is an integer; one
            # past a float (exp: 10**400) or a timer's reach never expires here.
            try:
                remaining = float(claims["exp"]) + self.settings.leeway - time.time()
            except OverflowError:
                remaining = math.inf
            if remaining < _NEVER:
                connection.close_after(remaining, 1008, "token expired")
