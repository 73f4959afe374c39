"""Receipt tokens: what a device app posts back to confirm that its push arrived (issue 4).

A token is `base64url(id ‖ HMAC-SHA256(key, b"clarion-receipt:" ‖ id)[:16])`, `id` being the
delivery's row id as 8 big-endian bytes: 32 characters, nothing stored per delivery, and only
the instance can make one. The MAC covers the id, so a token confirms its own delivery and no
other; the key is derived from CLARION_SECRET_KEY (clarion.vault.Vault.derive), so tokens of
another install, or from before a key change, are refused. 24 bytes encode to base64url without
padding and each 32-character string decodes to exactly one byte string: no two spellings of
a token.
"""

from __future__ import annotations

import base64
import hmac
import re

from clarion.vault import Vault

TOKEN_LENGTH = 32
_PURPOSE = "receipt-tokens"
_DOMAIN = b"clarion-receipt:"
_ID_BYTES = 8
# 128 bits: forging one takes 2^128 guesses at the API, each a request.
_MAC_BYTES = 16
_TOKEN = re.compile(r"[A-Za-z0-9_-]{32}")


def well_formed(token: str) -> bool:
    """Shaped like a token (says nothing about whether it is one): a public, cheap check."""
    return _TOKEN.fullmatch(token) is not None


class ReceiptTokens:
    """Mints and checks the tokens of one Clarion install."""

    def __init__(self, vault: Vault) -> None:
        # Keyed and fed the domain once; each token copies it (a third cheaper than hmac.digest).
        self._keyed = hmac.new(vault.derive(_PURPOSE), _DOMAIN, "sha256")

    def mint(self, delivery_id: int) -> str:
        """The token of `delivery_id`: the same every time, so a retry carries the same one."""
        ident = delivery_id.to_bytes(_ID_BYTES, "big")
        return base64.urlsafe_b64encode(ident + self._mac(ident)).decode("ascii")

    def verify(self, token: str) -> int | None:
        """The delivery id `token` was minted for, or None when this install never minted it."""
        if not well_formed(token):
            return None
        raw = base64.urlsafe_b64decode(token)
        ident, mac = raw[:_ID_BYTES], raw[_ID_BYTES:]
        if not hmac.compare_digest(mac, self._mac(ident)):
            return None
        return int.from_bytes(ident, "big")

    def _mac(self, ident: bytes) -> bytes:
        mac = self._keyed.copy()
        mac.update(ident)
        return mac.digest()[:_MAC_BYTES]
