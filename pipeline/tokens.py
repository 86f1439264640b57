"""Device tokens: short JWTs, HS256 pinned, ``exp``/``iss``/``aud`` checked.

Key rotation: every token names its key in the ``kid`` header; the verifier
holds a map of kid → secret, so a new key can be added and old tokens keep
working until they expire. Verified tokens are cached (by the raw token string)
until shortly before their expiry, so verification does not dominate a request.
"""

from __future__ import annotations

import time
import uuid
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass

import jwt

ALGORITHM = "HS256"
CACHE_SIZE = 100_000


class TokenError(Exception):
    """The token is missing, malformed, expired or not ours."""


@dataclass(frozen=True)
class DeviceIdentity:
    device_id: str
    expires_at: float


def issue(
    device_id: str,
    *,
    secret: str,
    kid: str,
    issuer: str,
    audience: str,
    ttl_s: int = 30 * 86400,
    now: float | None = None,
) -> str:
    """A signed device token for ``device_id``."""
    iat = int(now if now is not None else time.time())
    claims = {
        "sub": device_id,
        "iss": issuer,
        "aud": audience,
        "iat": iat,
        "exp": iat + ttl_s,
        "jti": uuid.uuid4().hex,
    }
    return jwt.encode(claims, secret, algorithm=ALGORITHM, headers={"kid": kid})


class TokenVerifier:
    """Checks device tokens; caches successes (never failures) until expiry."""

    def __init__(self, keys: Mapping[str, str], *, issuer: str, audience: str) -> None:
        self._keys = dict(keys)
        self._issuer = issuer
        self._audience = audience
        self._cache: OrderedDict[str, DeviceIdentity] = OrderedDict()

    def verify(self, token: str, now: float | None = None) -> DeviceIdentity:
        t = now if now is not None else time.time()
        hit = self._cache.get(token)
        if hit is not None:
            if hit.expires_at > t:
                return hit
            del self._cache[token]
            raise TokenError("token expired")
        ident = self._decode(token)
        if ident.expires_at <= t:
            raise TokenError("token expired")
        self._cache[token] = ident
        if len(self._cache) > CACHE_SIZE:
            self._cache.popitem(last=False)
        return ident

    def _decode(self, token: str) -> DeviceIdentity:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise TokenError("malformed token") from exc
        if header.get("alg") != ALGORITHM:
            raise TokenError("unexpected algorithm")
        secret = self._keys.get(str(header.get("kid", "")))
        if secret is None:
            raise TokenError("unknown key id")
        try:
            claims = jwt.decode(
                token,
                secret,
                algorithms=[ALGORITHM],
                audience=self._audience,
                issuer=self._issuer,
                options={"require": ["exp", "iss", "aud", "sub"]},
            )
        except jwt.ExpiredSignatureError as exc:
            raise TokenError("token expired") from exc
        except jwt.InvalidAudienceError as exc:
            raise TokenError("wrong audience") from exc
        except jwt.InvalidIssuerError as exc:
            raise TokenError("wrong issuer") from exc
        except jwt.InvalidSignatureError as exc:
            raise TokenError("bad signature") from exc
        except jwt.PyJWTError as exc:
            raise TokenError(f"invalid token: {exc}") from exc
        sub = claims.get("sub")
        if not isinstance(sub, str) or not sub or len(sub) > 128:
            raise TokenError("token has no usable subject")
        return DeviceIdentity(device_id=sub, expires_at=float(claims["exp"]))


def parse_keys(primary_kid: str, primary_secret: str, extra: str = "") -> dict[str, str]:
    """Key map from settings: the signing key plus ``kid=secret,kid=secret`` extras."""
    keys = {primary_kid: primary_secret}
    for part in filter(None, (p.strip() for p in extra.split(","))):
        kid, _, secret = part.partition("=")
        if kid and secret:
            keys[kid] = secret
    return keys


def bearer(header_value: str | None) -> str:
    """The token of an ``Authorization: Bearer …`` header."""
    if not header_value:
        raise TokenError("missing token")
    scheme, _, token = header_value.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise TokenError("expected a Bearer token")
    return token.strip()
