"""Secrets at rest: Fernet encryption for what Clarion must read back, hashes for what it checks.

Provider secrets and account auth tokens are encrypted with the instance key
(`CLARION_SECRET_KEY`): Clarion needs them in clear to talk to providers and to sign callbacks.
API key secrets are only ever compared, so only their SHA-256 is stored; they are 256 random
bits, which makes a slow password hash unnecessary. Anything else keyed by the instance (receipt
tokens) gets a key derived from it, never the instance key itself.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

from cryptography.fernet import Fernet, InvalidToken
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF


class Vault:
    """Seals and opens secrets with one instance key."""

    def __init__(self, key: str) -> None:
        self._fernet = Fernet(key.encode("ascii"))
        self._material = base64.urlsafe_b64decode(key.encode("ascii"))

    def derive(self, purpose: str) -> bytes:
        """A 256-bit key for one `purpose` (e.g. signing receipt tokens), derived one-way with
        HKDF-SHA256: whoever holds it can neither open secrets nor get another purpose's key."""
        hkdf = HKDF(
            algorithm=hashes.SHA256(), length=32, salt=None, info=b"clarion:" + purpose.encode()
        )
        return hkdf.derive(self._material)

    def seal(self, plaintext: str) -> str:
        return self._fernet.encrypt(plaintext.encode("utf-8")).decode("ascii")

    def open(self, sealed: str) -> str:
        try:
            return self._fernet.decrypt(sealed.encode("ascii")).decode("utf-8")
        except InvalidToken as exc:
            raise ValueError("secret was sealed with a different CLARION_SECRET_KEY") from exc


def new_key() -> str:
    return Fernet.generate_key().decode("ascii")


def is_valid_key(key: str) -> bool:
    try:
        Fernet(key.encode("ascii"))
    except (ValueError, UnicodeEncodeError):
        return False
    return True


def new_token() -> str:
    """A 32-hex-digit token, the shape of a Twilio auth token."""
    return secrets.token_hex(16)


def digest(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def matches(secret: str, expected_digest: str) -> bool:
    return hmac.compare_digest(digest(secret), expected_digest)
