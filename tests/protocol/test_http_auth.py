"""Signed HTTP requests and replay protection."""

from __future__ import annotations

import hashlib

import pytest
from multidict import CIMultiDict

from podlink.protocol.errors import ProtocolError
from podlink.protocol.http_auth import (
    H_KEY,
    H_NONCE,
    H_POD,
    H_SIG,
    H_TIME,
    SIGN_PREFIX,
    WINDOW_S,
    NonceCache,
    SignedRequest,
    sign_request,
    signing_input,
    verify_request,
)
from podlink.protocol.keys import verify_signature
from podlink.protocol.text import b64d, b64e
from tests.protocol.samples import ORGANIZER, OTHER_POD, POD

T = 1_750_000_000
BODY = b'{"title": "Soup"}'
NONCE = b64e(bytes(range(16)))
HERE = POD.public  # the pod whose node receives the requests


def headers(**kw: object) -> dict[str, str]:
    args: dict[str, object] = {"body": BODY, "when": T, "nonce": NONCE, "pod": HERE}
    args.update(kw)
    return sign_request(ORGANIZER, "POST", "/api/requests?pod=x%20y", **args)  # type: ignore[arg-type]


def refused(hdrs: dict[str, str], method: str = "POST", path: str = "/api/requests?pod=x%20y",
            body: bytes = BODY, now: float = T) -> str:  # fmt: skip
    with pytest.raises(ProtocolError) as info:
        verify_request(hdrs, method, path, body, pod=HERE, now=now)
    return info.value.reason


def test_signing_input_bytes() -> None:
    expected = (
        b"podlink/http/v2\x00POST\n/api/requests?pod=x%20y\n"
        + hashlib.sha256(BODY).hexdigest().encode()
        + b"\n1750000000\n" + NONCE.encode() + b"\n" + b64e(HERE).encode()
    )  # fmt: skip
    assert signing_input("post", "/api/requests?pod=x%20y", BODY, T, NONCE, HERE) == expected
    assert SIGN_PREFIX == b"podlink/http/v2\x00"
    empty = signing_input("GET", "/api/status", b"", T, NONCE, HERE)
    assert b"\ne3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855\n" in empty


def test_sign_and_verify() -> None:
    hdrs = headers()
    assert set(hdrs) == {
        "Podlink-Key", "Podlink-Time", "Podlink-Nonce", "Podlink-Pod", "Podlink-Signature",
    }  # fmt: skip
    assert hdrs[H_POD] == b64e(HERE)
    assert hdrs[H_KEY] == ORGANIZER.public_text and hdrs[H_TIME] == str(T)
    sig = b64d(hdrs[H_SIG], length=64)
    assert verify_signature(
        ORGANIZER.public,
        signing_input("POST", "/api/requests?pod=x%20y", BODY, T, NONCE, HERE),
        sig,
    )
    req = verify_request(hdrs, "POST", "/api/requests?pod=x%20y", BODY, pod=HERE, now=T)
    assert (req.key, req.when, req.nonce) == (ORGANIZER.public, T, NONCE)


def test_defaults_are_now_and_a_random_nonce() -> None:
    a = sign_request(ORGANIZER, "GET", "/api/status", pod=HERE)
    b = sign_request(ORGANIZER, "GET", "/api/status", pod=HERE)
    assert a[H_NONCE] != b[H_NONCE] and len(b64d(a[H_NONCE])) == 16
    verify_request(a, "GET", "/api/status", b"", pod=HERE)


def test_window() -> None:
    hdrs = headers()
    for now in (T - WINDOW_S, T + WINDOW_S):
        verify_request(hdrs, "POST", "/api/requests?pod=x%20y", BODY, pod=HERE, now=now)
    assert refused(hdrs, now=T + WINDOW_S + 1) == "stale"
    assert refused(hdrs, now=T - WINDOW_S - 1) == "stale"


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [("GET", "/api/requests?pod=x%20y", BODY), ("POST", "/api/requests?pod=x y", BODY),
     ("POST", "/api/requests?pod=x%20z", BODY), ("POST", "/api/requests", BODY),
     ("POST", "/api/requests?pod=x%20y", BODY + b" "), ("POST", "/api/requests?pod=x%20y", b"")],
)  # fmt: skip
def test_forged_when_anything_signed_changes(method: str, path: str, body: bytes) -> None:
    assert refused(headers(), method, path, body) == "forged"


def test_forged_header_values() -> None:
    for name, value in [(H_KEY, OTHER_POD.public_text), (H_TIME, str(T + 1)),
                        (H_NONCE, b64e(bytes(16)))]:  # fmt: skip
        assert refused({**headers(), name: value}) == "forged", name
    other = sign_request(
        OTHER_POD, "POST", "/api/requests?pod=x%20y", BODY, pod=HERE, when=T, nonce=NONCE
    )
    assert refused({**headers(), H_SIG: other[H_SIG]}) == "forged"


@pytest.mark.parametrize("name", [H_KEY, H_TIME, H_NONCE, H_POD, H_SIG])
def test_missing_headers(name: str) -> None:
    hdrs = headers()
    del hdrs[name]
    with pytest.raises(ProtocolError, match=f"missing {name}") as info:
        verify_request(hdrs, "POST", "/api/requests?pod=x%20y", BODY, pod=HERE, now=T)
    assert info.value.reason == "unauthorised"
    assert refused({}) == "unauthorised"


@pytest.mark.parametrize(
    ("name", "value"),
    [(H_KEY, "not a key"), (H_KEY, b64e(bytes(31))), (H_SIG, b64e(bytes(63))),
     (H_SIG, b64e(bytes(64)) + "=="), (H_TIME, "soon"), (H_TIME, "1.5e9"),
     (H_NONCE, "short"), (H_NONCE, "x" * 65), (H_NONCE, "abcdefghijklmnop\udcff"),
     (H_POD, b64e(bytes(31))), (H_POD, "not a key")],
)  # fmt: skip
def test_malformed_headers_are_invalid(name: str, value: str) -> None:
    assert refused({**headers(), name: value}) == "invalid"


def test_undecodable_path_is_invalid_not_a_crash() -> None:
    # aiohttp hands undecodable request bytes on as surrogate escapes.
    assert refused(headers(), path="/api/requests?pod=\udcff") == "invalid"


def test_nonce_cache_refuses_replays() -> None:
    cache = NonceCache()
    req = verify_request(headers(), "POST", "/api/requests?pod=x%20y", BODY, pod=HERE, now=T)
    cache.check_and_add(req, now=T)
    with pytest.raises(ProtocolError) as info:
        cache.check_and_add(req, now=T + 10)
    assert info.value.reason == "replayed"
    cache.check_and_add(SignedRequest(OTHER_POD.public, T, NONCE), now=T)  # other key: fine
    cache.check_and_add(SignedRequest(ORGANIZER.public, T, b64e(bytes(16))), now=T)


def test_nonce_cache_forgets_after_twice_the_window() -> None:
    cache = NonceCache()
    cache.check_and_add(SignedRequest(ORGANIZER.public, T, NONCE), now=T)
    with pytest.raises(ProtocolError):
        cache.check_and_add(SignedRequest(ORGANIZER.public, T, NONCE), now=T + 2 * WINDOW_S)
    # By then verify_request refuses the request as stale anyway; the cache may let go.
    cache.check_and_add(SignedRequest(ORGANIZER.public, T, NONCE), now=T + 2 * WINDOW_S + 1)


def test_nonce_cache_when_full_refuses_what_it_can_no_longer_check() -> None:
    cache = NonceCache(capacity=3)
    reqs = [SignedRequest(ORGANIZER.public, T + i, b64e(bytes([i]) * 16)) for i in range(5)]
    for req in reqs:
        cache.check_and_add(req, now=T + 5)
    for old in reqs[:2]:  # pushed out: a replay of them is refused as stale, never accepted
        with pytest.raises(ProtocolError) as info:
            cache.check_and_add(old, now=T + 5)
        assert info.value.reason == "stale"
    for kept in reqs[2:]:
        with pytest.raises(ProtocolError) as info:
            cache.check_and_add(kept, now=T + 5)
        assert info.value.reason == "replayed"
    cache.check_and_add(SignedRequest(ORGANIZER.public, T + 6, b64e(bytes(16))), now=T + 6)


@pytest.mark.parametrize(
    "value",
    ["+1750000000", " 1750000000", "1750000000 ", "1_750_000_000", "-1750000000",
     "١٧٥٠٠٠٠٠٠٠", "1750000000\n", "", "0" + "1750000000" * 2, "0x1", "1750000000.0"],
)  # fmt: skip
def test_time_is_one_to_twelve_ascii_digits(value: str) -> None:
    assert refused({**headers(), H_TIME: value}) == "invalid"


def test_time_with_leading_zeros_is_read_as_its_value() -> None:
    req = verify_request({**headers(), H_TIME: "00" + str(T)}, "POST", "/api/requests?pod=x%20y",
                         BODY, pod=HERE, now=T)  # fmt: skip
    assert req.when == T


def test_header_names_are_case_insensitive() -> None:
    for change in (str.lower, str.upper):
        hdrs = {change(name): value for name, value in headers().items()}
        assert verify_request(
            hdrs, "POST", "/api/requests?pod=x%20y", BODY, pod=HERE, now=T
        ).key == (ORGANIZER.public)


def test_a_repeated_signature_header_is_invalid() -> None:
    hdrs = CIMultiDict(headers())
    hdrs.add(H_NONCE.lower(), b64e(bytes(16)))
    assert refused(hdrs) == "invalid"  # type: ignore[arg-type]
    assert refused({**headers(), H_KEY.lower(): OTHER_POD.public_text}) == "invalid"


def test_nonce_length_is_counted_in_characters() -> None:
    nonce = "é" * 16  # 16 characters, 32 bytes of UTF-8
    hdrs = headers(nonce=nonce)
    assert (
        verify_request(hdrs, "POST", "/api/requests?pod=x%20y", BODY, pod=HERE, now=T).nonce
        == nonce
    )
    assert refused(headers(nonce="é" * 65)) == "invalid"
    assert refused(headers(nonce="x" * 15)) == "invalid"


def test_nonce_cache_floor_refuses_requests_signed_before_it() -> None:
    """A node starts its replay memory with a floor: what was signed before is stale."""
    from podlink.protocol.http_auth import NonceCache, SignedRequest

    cache = NonceCache(floor=1000)
    cache.check_and_add(SignedRequest(b"k" * 32, 1000, "n" * 16), now=1000)
    with pytest.raises(ProtocolError) as err:
        cache.check_and_add(SignedRequest(b"k" * 32, 999, "m" * 16), now=1000)
    assert err.value.reason == "stale"


def test_a_request_signed_for_another_pod_is_refused() -> None:
    """A request captured on its way to one node, replayed at another where its signer
    also has a role (version 1 signed no receiver)."""
    for_other = headers(pod=OTHER_POD.public)
    with pytest.raises(ProtocolError, match="signed for the pod") as info:
        verify_request(for_other, "POST", "/api/requests?pod=x%20y", BODY, pod=HERE, now=T)
    assert info.value.reason == "unauthorised"
    # Re-addressed to this pod without signing again: the signature does not verify.
    assert refused({**for_other, H_POD: b64e(HERE)}) == "forged"
    # Without the header (a version 1 sender): refused, saying why.
    del for_other[H_POD]
    with pytest.raises(ProtocolError, match="podlink/http/v2") as info:
        verify_request(for_other, "POST", "/api/requests?pod=x%20y", BODY, pod=HERE, now=T)
    assert info.value.reason == "unauthorised"


def test_one_key_filling_its_memory_locks_out_only_itself() -> None:
    """Each key has a memory of its own: a key that fills it with requests stamped minutes
    ahead lifts its own floor, never another key's."""
    cache = NonceCache(capacity=3)
    for i in range(5):
        ahead = SignedRequest(OTHER_POD.public, T + 290 + i, b64e(bytes([i]) * 16))
        cache.check_and_add(ahead, now=T)
    with pytest.raises(ProtocolError) as info:  # its own earlier-signed request: let go
        cache.check_and_add(SignedRequest(OTHER_POD.public, T, NONCE), now=T)
    assert info.value.reason == "stale"
    cache.check_and_add(SignedRequest(ORGANIZER.public, T, NONCE), now=T)  # others: fine
    assert len(cache) == 4
    cache.check_and_add(SignedRequest(ORGANIZER.public, T + 2000, b64e(bytes(16))), now=T + 2000)
    assert len(cache) == 1  # the rest left the window on both sides, and was swept


def test_a_stale_request_names_both_clocks() -> None:
    """A pod whose clock is hours off refuses an honest peer's pull as stale, and the peer
    reads the refusal: both times are in it, so either side can tell whose clock is off."""
    keys, pod = ORGANIZER, POD.public
    signed_at = 1_750_000_000  # 2025-06-15 15:06:40 UTC
    headers = sign_request(keys, "GET", "/v1/peer/changes", when=signed_at, pod=pod)
    with pytest.raises(ProtocolError) as err:
        verify_request(headers, "GET", "/v1/peer/changes", b"", pod=pod, now=signed_at - 7200)
    assert err.value.reason == "stale"
    assert "2025-06-15 15:06:40 UTC" in err.value.message, err.value.message
    assert "2025-06-15 13:06:40 UTC" in err.value.message, err.value.message
