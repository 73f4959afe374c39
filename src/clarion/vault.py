"""Secrets at rest: Fernet encryption for what Clarion must read back, hashes for what it checks.

Provider secrets and account auth tokens are encrypted with the instance key
(`CLARION_SECRET_KEY`): Clarion needs them in clear to talk to providers and to sign callbacks.
API key secrets are only ever compared, so only their SHA-256 is stored; they are 256 random
bits, which makes a slow password hash unnecessary.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

from cryptography.fernet import Fernet, InvalidToken


class Vault:
    """Seals and opens secrets with one instance key."""

    def __init__(self, key: str) -> None:
        self._fernet = Fernet(key.encode("ascii"))

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
