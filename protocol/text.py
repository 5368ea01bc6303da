"""Text forms of keys and ids: base64url without padding, and short prefixes."""

from __future__ import annotations

import base64
import binascii

from podlink.protocol.errors import ProtocolError

SHORT_LEN = 8  # characters shown on screen; enough for a pod's worth of ids


def b64e(raw: bytes) -> str:
    """Encode bytes as base64url without padding (how keys and ids appear in JSON)."""
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def b64d(text: str, *, length: int | None = None, what: str = "value") -> bytes:
    """Decode base64url without padding; refuse other alphabets and wrong lengths."""
    if not isinstance(text, str) or not text or "=" in text:
        raise ProtocolError("invalid", f"{what} must be base64url text without padding")
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raise ProtocolError("invalid", f"{what} is not base64url: {text[:16]!r}") from None
    if b64e(raw) != text:  # non-canonical trailing bits or stray characters
        raise ProtocolError("invalid", f"{what} is not canonical base64url: {text[:16]!r}")
    if length is not None and len(raw) != length:
        raise ProtocolError("invalid", f"{what} must be {length} bytes, got {len(raw)}")
    return raw


def short(raw_or_text: bytes | str, length: int = SHORT_LEN) -> str:
    """The short on-screen form of a key or id (a prefix of its base64url text)."""
    text = b64e(raw_or_text) if isinstance(raw_or_text, bytes) else raw_or_text
    return text[:length]


def key_or_none(text: str) -> bytes | None:
    """``text`` as a 32-byte key if it is one in base64url (43 characters), else None: a
    source naming a peer, among sources that name something else ("local", "restore")."""
    if len(text) != 43:
        return None
    try:
        return b64d(text, length=32)
    except ProtocolError:
        return None
