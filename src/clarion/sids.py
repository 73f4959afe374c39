"""Twilio-compatible identifiers: a two-letter prefix and 32 lowercase hex digits.

Prefixes follow Twilio's (reference/twilio-notify.md §2.5) so SDK code that checks them keeps
working; the SDK accepts upper-case hex from callers, so matching is case-insensitive and
stored SIDs are always lower-case.
"""

from __future__ import annotations

import re
import secrets

ACCOUNT = "AC"
API_KEY = "SK"
CREDENTIAL = "CR"
SERVICE = "IS"
BINDING = "BS"
NOTIFICATION = "NT"
USER = "US"
SEGMENT = "GS"
MESSAGING_SERVICE = "MG"
# Deliveries (an extension) are rows of a hot table; their SIDs encode the row id (see
# row_sid) so fan-out can write them in bulk without generating random SIDs.
DELIVERY = "DL"
MAX_ROW_ID = 2**63 - 1  # BIGINT

_HEX32 = re.compile(r"[0-9a-fA-F]{32}")


def new_sid(prefix: str) -> str:
    """A fresh random SID; 128 random bits make collisions a non-event."""
    return prefix + secrets.token_hex(16)


def is_sid(value: str, prefix: str) -> bool:
    """True when `value` is `prefix` followed by exactly 32 hex digits."""
    return len(value) == 34 and value.startswith(prefix) and _HEX32.fullmatch(value, 2) is not None


def normalize_sid(value: str) -> str:
    """The stored spelling of a SID the caller may have written with upper-case hex."""
    return value[:2] + value[2:].lower()


def row_sid(prefix: str, row_id: int) -> str:
    """The SID of a row whose SID is its id, e.g. `DL` + 32 hex digits of a delivery id."""
    return f"{prefix}{row_id:032x}"


def row_id(sid: str) -> int | None:
    """The id inside a `row_sid` (callers check `is_sid` first); None when no row can have it."""
    value = int(sid[2:], 16)
    return value if value <= MAX_ROW_ID else None
