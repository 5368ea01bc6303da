"""Sealed boxes (to a pod) and secret boxes (per member), from NaCl.

* A **sealed** body is encrypted to a pod's Ed25519 key converted to X25519
  (``crypto_sign_ed25519_pk_to_curve25519``) with an anonymous NaCl sealed box; only the
  holder of the pod's secret key opens it.
* A **member key** is a random 32-byte XSalsa20-Poly1305 key; a member's personal details
  are stored only inside a SecretBox under it, so destroying the key forgets the member
  while the signed, hashed ciphertext keeps every chain intact (crypto-shredding).
"""

from __future__ import annotations

import nacl.exceptions
import nacl.public
import nacl.secret
import nacl.signing
import nacl.utils

from podlink.protocol.errors import ProtocolError
from podlink.protocol.keys import KEY_LEN, Keypair

MEMBER_KEY_LEN = nacl.secret.SecretBox.KEY_SIZE


def seal_to(pod_key: bytes, plaintext: bytes) -> bytes:
    """Encrypt ``plaintext`` so that only the pod holding ``pod_key`` (Ed25519) can read it."""
    if len(pod_key) != KEY_LEN:
        raise ProtocolError("invalid", f"a pod key is {KEY_LEN} bytes, got {len(pod_key)}")
    try:
        recipient = nacl.signing.VerifyKey(pod_key).to_curve25519_public_key()
    except (nacl.exceptions.RuntimeError, nacl.exceptions.ValueError, ValueError):
        raise ProtocolError("invalid", "not a valid Ed25519 pod key") from None
    return nacl.public.SealedBox(recipient).encrypt(plaintext)


def open_sealed(keypair: Keypair, box: bytes) -> bytes:
    """Open a sealed box addressed to ``keypair``; ``forged`` if it was not for us."""
    secret = keypair.signing.to_curve25519_private_key()
    try:
        return nacl.public.SealedBox(secret).decrypt(box)
    except nacl.exceptions.CryptoError:
        raise ProtocolError("forged", "sealed box does not open with this pod's key") from None


def new_member_key() -> bytes:
    """A fresh random member key."""
    return nacl.utils.random(MEMBER_KEY_LEN)


def lock(member_key: bytes, plaintext: bytes) -> bytes:
    """Encrypt with a member key (random nonce prepended)."""
    # bytes(): PyNaCl returns an EncryptedMessage subclass, which msgspec refuses to encode.
    return bytes(nacl.secret.SecretBox(member_key).encrypt(plaintext))


def unlock(member_key: bytes, box: bytes) -> bytes:
    """Decrypt with a member key; ``forged`` if the key is wrong or the box was altered."""
    try:
        return nacl.secret.SecretBox(member_key).decrypt(box)
    except (nacl.exceptions.CryptoError, nacl.exceptions.ValueError, ValueError):
        raise ProtocolError("forged", "member box does not open with this key") from None
