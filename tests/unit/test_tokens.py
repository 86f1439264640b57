"""pipeline.tokens: device JWTs (HS256 pinned), key rotation, verification cache.

PyJWT checks ``exp``/``iat`` against the wall clock, so tokens are issued at the
real time and expiry is exercised by passing a later ``now`` to ``verify``.
"""

from __future__ import annotations

import base64
import time

import jwt
import orjson
import pytest

from pipeline.tokens import TokenError, TokenVerifier, bearer, issue, parse_keys

S1 = "secret-one-0123456789abcdef-0123456789"
S2 = "secret-two-0123456789abcdef-0123456789"
ISS, AUD = "traverz", "traverz-devices"


def _issue(device: str = "dev-1", *, secret: str = S1, kid: str = "k1", ttl: int = 3600, **kw: object) -> str:
    args: dict[str, object] = {"secret": secret, "kid": kid, "issuer": ISS, "audience": AUD, "ttl_s": ttl}
    args.update(kw)
    return issue(device, **args)  # type: ignore[arg-type]


def _verifier(keys: dict[str, str] | None = None) -> TokenVerifier:
    return TokenVerifier(keys or {"k1": S1}, issuer=ISS, audience=AUD)


def _claims(**over: object) -> dict[str, object]:
    now = int(time.time())
    c: dict[str, object] = {"sub": "dev-1", "iss": ISS, "aud": AUD, "iat": now, "exp": now + 3600}
    c.update(over)
    return {k: v for k, v in c.items() if v is not None}


def test_issue_then_verify_gives_device() -> None:
    tok = _issue("dev-42", ttl=600)
    t = time.time()
    ident = _verifier().verify(tok, now=t)
    assert ident.device_id == "dev-42"
    assert t + 590 <= ident.expires_at <= t + 601
    assert jwt.get_unverified_header(tok)["kid"] == "k1"
    assert jwt.get_unverified_header(tok)["alg"] == "HS256"


def test_expired_via_now_is_refused() -> None:
    tok = _issue(ttl=60)
    v = _verifier()
    with pytest.raises(TokenError, match="expired"):
        v.verify(tok, now=time.time() + 61)


def test_expired_on_the_wall_clock_is_refused() -> None:
    tok = _issue(ttl=60, now=time.time() - 3600)
    with pytest.raises(TokenError, match="expired"):
        _verifier().verify(tok)


def test_cached_token_still_refused_after_expiry() -> None:
    tok = _issue(ttl=60)
    v = _verifier()
    t = time.time()
    first = v.verify(tok, now=t)
    assert v.verify(tok, now=t + 30) == first  # served from the cache
    with pytest.raises(TokenError, match="expired"):
        v.verify(tok, now=t + 61)
    with pytest.raises(TokenError, match="expired"):
        v.verify(tok, now=t + 3600)


def test_wrong_secret_refused() -> None:
    with pytest.raises(TokenError, match="signature"):
        _verifier().verify(_issue(secret=S2))


def test_wrong_audience_refused() -> None:
    with pytest.raises(TokenError, match="audience"):
        _verifier().verify(_issue(audience="someone-else"))


def test_wrong_issuer_refused() -> None:
    with pytest.raises(TokenError, match="issuer"):
        _verifier().verify(_issue(issuer="evil"))


def test_unknown_kid_refused() -> None:
    with pytest.raises(TokenError, match="key id"):
        _verifier().verify(_issue(kid="k9"))
    missing_kid = jwt.encode(_claims(), S1, algorithm="HS256")
    with pytest.raises(TokenError, match="key id"):
        _verifier().verify(missing_kid)


def test_alg_none_refused() -> None:
    tok = jwt.encode(_claims(), None, algorithm="none", headers={"kid": "k1"})
    with pytest.raises(TokenError, match="algorithm"):
        _verifier().verify(tok)


def test_hs512_refused() -> None:
    tok = jwt.encode(_claims(), S1 + S1, algorithm="HS512", headers={"kid": "k1"})
    with pytest.raises(TokenError, match="algorithm"):
        _verifier({"k1": S1 + S1}).verify(tok)


def test_header_claiming_hs256_over_other_signature_refused() -> None:
    good = _issue()
    head, body, _sig = good.split(".")
    forged = f"{head}.{body}.{base64.urlsafe_b64encode(b'x' * 32).rstrip(b'=').decode()}"
    with pytest.raises(TokenError):
        _verifier().verify(forged)


def test_tampered_subject_refused() -> None:
    head, body, sig = _issue("dev-1").split(".")
    claims = orjson.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    claims["sub"] = "dev-2"
    body2 = base64.urlsafe_b64encode(orjson.dumps(claims)).rstrip(b"=").decode()
    with pytest.raises(TokenError):
        _verifier().verify(f"{head}.{body2}.{sig}")


@pytest.mark.parametrize("garbage", ["", "abc", "a.b.c", "....", "eyJhbGciOiJIUzI1NiJ9.e30", "Bearer x.y.z"])
def test_garbage_refused(garbage: str) -> None:
    with pytest.raises(TokenError):
        _verifier().verify(garbage)


@pytest.mark.parametrize(
    "over",
    [{"sub": None}, {"sub": ""}, {"sub": "x" * 129}, {"sub": 12}, {"exp": None}, {"aud": None}, {"iss": None}],
)
def test_claims_required(over: dict[str, object]) -> None:
    tok = jwt.encode(_claims(**over), S1, algorithm="HS256", headers={"kid": "k1"})
    with pytest.raises(TokenError):
        _verifier().verify(tok)


def test_failures_are_not_cached() -> None:
    v = _verifier()
    tok = _issue(kid="k9")
    for _ in range(2):
        with pytest.raises(TokenError):
            v.verify(tok)


def test_key_rotation_accepts_both_kids() -> None:
    v = _verifier(parse_keys("k2", S2, f"k1={S1}"))
    assert v.verify(_issue("old", kid="k1", secret=S1)).device_id == "old"
    assert v.verify(_issue("new", kid="k2", secret=S2)).device_id == "new"
    # a kid maps to its own secret: k2's name with k1's secret is refused
    with pytest.raises(TokenError):
        v.verify(_issue(kid="k2", secret=S1))
    # once k1 is retired, its tokens stop working
    with pytest.raises(TokenError, match="key id"):
        _verifier({"k2": S2}).verify(_issue(kid="k1", secret=S1))


def test_parse_keys() -> None:
    assert parse_keys("k1", "s1") == {"k1": "s1"}
    assert parse_keys("k1", "s1", " k2=s2 , k3=a=b,bad,=x,k4=, ") == {"k1": "s1", "k2": "s2", "k3": "a=b"}


@pytest.mark.parametrize(
    "header,token",
    [("Bearer abc.def.ghi", "abc.def.ghi"), ("bearer xyz", "xyz"), ("BEARER   tok  ", "tok")],
)
def test_bearer_parses(header: str, token: str) -> None:
    assert bearer(header) == token


@pytest.mark.parametrize("header", [None, "", "Bearer", "Bearer ", "Bearer    ", "Basic abc", "Token abc", "Bearerabc"])
def test_bearer_refuses(header: str | None) -> None:
    with pytest.raises(TokenError):
        bearer(header)

