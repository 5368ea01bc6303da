"""Keys on disk and keys and ids as text."""

from __future__ import annotations

import base64
import os
import stat
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from podlink.protocol.errors import ProtocolError
from podlink.protocol.keys import (
    KeyFileError,
    Keypair,
    load_keypair,
    parse_public_key,
    save_keypair,
    verify_signature,
)
from podlink.protocol.text import SHORT_LEN, b64d, b64e, short
from tests.protocol.samples import ORGANIZER, POD


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_save_and_load_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "pod.key"
    save_keypair(path, POD)
    assert mode(path) == 0o600
    assert path.read_text() == b64e(POD.seed) + "\n"
    loaded = load_keypair(path)
    assert loaded.public == POD.public and loaded.seed == POD.seed
    assert not (tmp_path / "keys" / "pod.key.tmp").exists()


def test_save_is_0600_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        save_keypair(tmp_path / "a.key", POD)
    finally:
        os.umask(old)
    assert mode(tmp_path / "a.key") == 0o600


def test_save_never_replaces_a_key_by_accident(tmp_path: Path) -> None:
    path = tmp_path / "pod.key"
    save_keypair(path, POD)
    with pytest.raises(KeyFileError, match="already exists"):
        save_keypair(path, ORGANIZER)
    assert load_keypair(path).public == POD.public
    save_keypair(path, ORGANIZER, overwrite=True)
    assert load_keypair(path).public == ORGANIZER.public
    assert mode(path) == 0o600


@pytest.mark.parametrize("wide", [0o640, 0o604, 0o644, 0o660, 0o606, 0o610, 0o601])
def test_load_refuses_files_others_can_use(tmp_path: Path, wide: int) -> None:
    path = tmp_path / "pod.key"
    save_keypair(path, POD)
    path.chmod(wide)
    with pytest.raises(KeyFileError) as info:
        load_keypair(path)
    message = str(info.value)
    assert "readable by other users" in message and f"{wide:o}" in message
    assert f"chmod 600 {path}" in message


def test_load_missing_and_malformed(tmp_path: Path) -> None:
    with pytest.raises(KeyFileError, match="no key file"):
        load_keypair(tmp_path / "nothing.key")
    for text in ["", "not a key", b64e(bytes(31)), b64e(bytes(32)) + "==", "\xff\xfe"]:
        path = tmp_path / "bad.key"
        path.write_text(text, encoding="latin-1")
        path.chmod(0o600)
        with pytest.raises(KeyFileError, match="does not hold a podlink key"):
            load_keypair(path)


def test_keypair_basics() -> None:
    assert Keypair.from_seed(POD.seed).public == POD.public
    with pytest.raises(ValueError):
        Keypair.from_seed(bytes(31))
    assert POD.seed.hex() not in repr(POD) and b64e(POD.seed) not in repr(POD)
    assert POD.public_text in repr(POD)
    assert POD.short == POD.public_text[:SHORT_LEN]
    fresh = Keypair.generate()
    assert fresh.public != Keypair.generate().public
    sig = fresh.sign(b"hello")
    assert len(sig) == 64 and verify_signature(fresh.public, b"hello", sig)
    assert not verify_signature(fresh.public, b"hellO", sig)
    assert not verify_signature(POD.public, b"hello", sig)
    assert not verify_signature(fresh.public[:31], b"hello", sig)
    assert not verify_signature(fresh.public, b"hello", sig[:63])
    assert not verify_signature(bytes(32), b"hello", bytes(64))


# -- text forms -----------------------------------------------------------------------------


def test_public_key_text() -> None:
    text = POD.public_text
    assert len(text) == 43 and "=" not in text
    assert text == base64.urlsafe_b64encode(POD.public).decode().rstrip("=")
    assert parse_public_key(text) == POD.public
    assert parse_public_key(f"  {text}\n") == POD.public


@given(st.binary(max_size=80))
@settings(max_examples=200, deadline=None)
def test_b64_round_trip(raw: bytes) -> None:
    text = b64e(raw)
    assert "=" not in text and set(text) <= set(
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    )
    if raw:
        assert b64d(text) == raw
        assert b64d(text, length=len(raw)) == raw


@pytest.mark.parametrize(
    "text",
    [
        "",  # nothing
        b64e(bytes(32)) + "=",  # padding
        "AAAA==",
        "AB",  # non-canonical: the unused low bits of the last character are not zero
        "AAB",
        "A",  # impossible length
        "ab+c",  # the standard alphabet, not base64url
        "ab/c",
        "ab c",  # whitespace inside
        "abc\n",
        "abcé",
    ],
)
def test_b64d_refuses(text: str) -> None:
    with pytest.raises(ProtocolError) as info:
        b64d(text, what="thing")
    assert info.value.reason == "invalid" and "thing" in str(info.value)


def test_b64d_refuses_wrong_length_and_non_text() -> None:
    with pytest.raises(ProtocolError, match="must be 32 bytes, got 31"):
        b64d(b64e(bytes(31)), length=32, what="key")
    with pytest.raises(ProtocolError):
        b64d(b"AAAA", what="key")  # type: ignore[arg-type]
    with pytest.raises(ProtocolError):
        parse_public_key(b64e(bytes(33)))


def test_short_prefixes() -> None:
    assert short(POD.public) == b64e(POD.public)[:8] == POD.short
    assert short(POD.public_text) == POD.public_text[:8]
    assert short(POD.public, 12) == POD.public_text[:12]
    assert POD.public_text.startswith(short(POD.public))
