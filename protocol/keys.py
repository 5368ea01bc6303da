"""Ed25519 identities: generate, save, load, and print them.

A pod is its node's key; an organizer is a key kept by their CLI. Secret key files hold
the 32-byte seed as base64url text, are written 0600, and are refused when group or
other users can read them (as ssh does), because a leaked key can speak for the pod.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

import nacl.bindings
import nacl.exceptions
import nacl.signing

from podlink.protocol.errors import ProtocolError
from podlink.protocol.text import b64d, b64e, short

KEY_LEN = 32
SIG_LEN = 64


class KeyFileError(Exception):
    """Raised when a key file is missing, unreadable, malformed or too widely readable."""


@dataclass(frozen=True, slots=True)
class Keypair:
    """An Ed25519 signing key and its public half."""

    signing: nacl.signing.SigningKey

    @classmethod
    def generate(cls) -> Keypair:
        return cls(nacl.signing.SigningKey.generate())

    @classmethod
    def from_seed(cls, seed: bytes) -> Keypair:
        if len(seed) != KEY_LEN:
            raise ValueError(f"an Ed25519 seed is {KEY_LEN} bytes, got {len(seed)}")
        return cls(nacl.signing.SigningKey(seed))

    @property
    def seed(self) -> bytes:
        return bytes(self.signing)

    @property
    def public(self) -> bytes:
        return bytes(self.signing.verify_key)

    @property
    def public_text(self) -> str:
        return b64e(self.public)

    @property
    def short(self) -> str:
        return short(self.public)

    def sign(self, message: bytes) -> bytes:
        """Return the 64-byte detached signature of ``message``."""
        return self.signing.sign(message).signature

    def __repr__(self) -> str:  # never print the seed
        return f"Keypair(public={self.public_text})"


def verify_signature(public: bytes, message: bytes, signature: bytes) -> bool:
    """True if ``signature`` is a valid Ed25519 signature of ``message`` by ``public``."""
    if len(public) != KEY_LEN or len(signature) != SIG_LEN:
        return False
    try:  # the binding itself: VerifyKey objects cost ~2 us of GIL-held Python per call
        nacl.bindings.crypto_sign_open(signature + message, public)
    except (nacl.exceptions.BadSignatureError, nacl.exceptions.ValueError, ValueError):
        return False
    return True


def parse_public_key(text: str) -> bytes:
    """Parse a public key written as base64url (43 characters)."""
    return b64d(text.strip(), length=KEY_LEN, what="public key")


def save_keypair(path: Path, keypair: Keypair, *, overwrite: bool = False) -> None:
    """Write the seed to ``path`` with mode 0600, atomically; never replace a key by accident."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise KeyFileError(f"{path} already exists; refusing to replace a key")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)  # umask cannot widen it, an old tmp file cannot either
        os.write(fd, (b64e(keypair.seed) + "\n").encode("ascii"))
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def load_keypair(path: Path) -> Keypair:
    """Read a key written by :func:`save_keypair`, refusing files others can read."""
    path = Path(path)
    try:
        st = path.stat()
    except FileNotFoundError:
        raise KeyFileError(f"no key file at {path}") from None
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise KeyFileError(
            f"{path} is readable by other users (mode {stat.S_IMODE(st.st_mode):o}); "
            f"run `chmod 600 {path}` and try again"
        )
    text = path.read_text(encoding="ascii", errors="replace").strip()
    try:
        return Keypair.from_seed(b64d(text, length=KEY_LEN, what="secret key"))
    except ProtocolError as err:
        raise KeyFileError(f"{path} does not hold a podlink key: {err}") from None
