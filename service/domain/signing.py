"""Ed25519 publisher keys: key ids, signing the exact published bytes, checking.

PyNaCl (libsodium) releases the GIL while verifying, so callers may spread a
batch of checks over threads.
"""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass

import blake3
import nacl.exceptions
import nacl.signing

KEY_ID_DOMAIN = b"trustledger/key-id/v1\x00"
SIGNATURE_SIZE = 64
PUBLIC_KEY_SIZE = 32


def b64url(data: bytes) -> str:
    """base64url without padding, as keys and signatures travel."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


_B64URL = re.compile(r"[A-Za-z0-9_-]*")


def from_b64url(text: str) -> bytes:
    """Decode unpadded base64url strictly; raises ValueError on anything else.

    Strict, so that one signature has exactly one accepted spelling."""
    if not _B64URL.fullmatch(text) or len(text) % 4 == 1:
        raise ValueError("not unpadded base64url (alphabet A-Z a-z 0-9 - _, no '=')")
    data = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    if b64url(data) != text:
        # Unused low bits in the last character set: another spelling of the same bytes.
        raise ValueError("not canonical base64url (unused trailing bits are set)")
    return data


def key_id_for(public_key: bytes) -> str:
    """The key id: hex of the first 8 bytes of BLAKE3(domain || public key)."""
    if len(public_key) != PUBLIC_KEY_SIZE:
        raise ValueError(f"Ed25519 public key must be 32 bytes, got {len(public_key)}")
    return blake3.blake3(KEY_ID_DOMAIN + public_key).digest()[:8].hex()


@dataclass(frozen=True, slots=True)
class SigningKey:
    """An org's private publisher key."""

    org: str
    seed: bytes

    @classmethod
    def generate(cls, org: str) -> SigningKey:
        return cls(org=org, seed=bytes(nacl.signing.SigningKey.generate()))

    @property
    def public_key(self) -> bytes:
        return bytes(nacl.signing.SigningKey(self.seed).verify_key)

    @property
    def key_id(self) -> str:
        return key_id_for(self.public_key)

    def sign(self, message: bytes) -> bytes:
        """The 64-byte detached signature over `message`."""
        return nacl.signing.SigningKey(self.seed).sign(message).signature


def verify_signature(public_key: bytes, message: bytes, signature: bytes) -> bool:
    """True when `signature` is a valid Ed25519 signature of `message`."""
    if len(signature) != SIGNATURE_SIZE or len(public_key) != PUBLIC_KEY_SIZE:
        return False
    try:
        nacl.signing.VerifyKey(public_key).verify(message, signature)
    except (nacl.exceptions.BadSignatureError, nacl.exceptions.ValueError):
        return False
    return True
