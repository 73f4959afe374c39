"""Twilio's request encoding: form fields and query strings with PascalCase, repeated keys.

Lists arrive as repeated keys (`Tag=a&Tag=b`, or just one), objects as JSON text in one field,
booleans in any case (reference/twilio-notify.md §2.3). Every getter validates and raises the
20001 error that names the parameter, so a handler reads like the parameter table it serves.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from datetime import date
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from starlette.requests import Request

from clarion import errors, sids

MAX_BODY_BYTES = 1024 * 1024  # Twilio: "request entity ≤ 1 MB"
FORM_CONTENT_TYPE = "application/x-www-form-urlencoded"
_INTEGER = re.compile(r"-?[0-9]{1,18}")


class Form:
    """The parameters of one request, by name, in the order they were sent."""

    def __init__(self, pairs: Iterable[tuple[str, str]]) -> None:
        self._values: dict[str, list[str]] = {}
        for name, value in pairs:
            if "\x00" in value:
                raise errors.invalid_parameter(name, "must not contain NUL characters")
            self._values.setdefault(name, []).append(value)

    @classmethod
    async def from_body(cls, request: Request) -> Form:
        body = await read_body(request)
        content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if body and content_type != FORM_CONTENT_TYPE:
            raise errors.ClarionError(
                415,
                errors.INVALID_PARAMETER,
                f"Unsupported Content-Type {content_type or '(none)'!r}: send the parameters "
                f"as {FORM_CONTENT_TYPE}",
            )
        return cls(_parse(body, "request body"))

    @classmethod
    def from_query(cls, request: Request) -> Form:
        return cls(_parse(request.scope.get("query_string", b""), "query string"))

    def params(self) -> dict[str, list[str]]:
        """Every parameter with all its values, e.g. to check a webhook's signature."""
        return {name: list(values) for name, values in self._values.items()}

    def names(self) -> set[str]:
        return set(self._values)

    def has(self, name: str) -> bool:
        return name in self._values

    def string(self, name: str, *, max_length: int = 4096, required: bool = False) -> str | None:
        values = self._values.get(name)
        if not values:
            if required:
                raise errors.missing_parameter(name)
            return None
        value = values[0]
        if len(value) > max_length:
            raise errors.invalid_parameter(name, f"must be at most {max_length} characters")
        return value

    def required(self, name: str, *, max_length: int = 4096) -> str:
        value = self.string(name, max_length=max_length, required=True)
        assert value is not None
        if not value:
            raise errors.invalid_parameter(name, "must not be empty")
        return value

    def strings(self, name: str, *, max_items: int, max_length: int = 256) -> list[str]:
        values = self._values.get(name, [])
        if len(values) > max_items:
            raise errors.invalid_parameter(name, f"at most {max_items} values are allowed")
        for value in values:
            if not value:
                raise errors.invalid_parameter(name, "values must not be empty")
            if len(value) > max_length:
                raise errors.invalid_parameter(
                    name, f"values must be at most {max_length} characters"
                )
        return list(dict.fromkeys(values))

    def boolean(self, name: str) -> bool | None:
        value = self.string(name)
        if value is None:
            return None
        lowered = value.lower()
        if lowered not in ("true", "false"):
            raise errors.invalid_parameter(name, "must be true or false")
        return lowered == "true"

    def integer(self, name: str, *, minimum: int, maximum: int) -> int | None:
        value = self.string(name, max_length=32)
        if value is None:
            return None
        if not _INTEGER.fullmatch(value) or not minimum <= int(value) <= maximum:
            raise errors.invalid_parameter(name, f"must be an integer from {minimum} to {maximum}")
        return int(value)

    def choice(self, name: str, options: Iterable[str]) -> str | None:
        value = self.string(name, max_length=64)
        allowed = tuple(options)
        if value is not None and value not in allowed:
            raise errors.invalid_parameter(name, f"must be one of {', '.join(allowed)}")
        return value

    def choices(self, name: str, options: Iterable[str]) -> list[str]:
        """A repeated parameter whose every value is one of `options` (e.g. a status filter)."""
        allowed = tuple(options)
        values = self.strings(name, max_items=len(allowed), max_length=64)
        for value in values:
            if value not in allowed:
                raise errors.invalid_parameter(name, f"values must be among {', '.join(allowed)}")
        return values

    def sid(self, name: str, prefix: str) -> str | None:
        """A SID of the given kind; the empty string means "none" (how a setting is cleared)."""
        value = self.string(name, max_length=64)
        if not value:
            return None
        if not sids.is_sid(value, prefix):
            raise errors.invalid_parameter(name, f"expected {prefix} followed by 32 hex digits")
        return sids.normalize_sid(value)

    def url(self, name: str) -> str | None:
        value = self.string(name, max_length=2048)
        if not value:
            return None
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise errors.invalid_parameter(name, "must be an absolute http or https URL")
        return value

    def json_object(self, name: str) -> dict[str, Any] | None:
        value = self.string(name, max_length=MAX_BODY_BYTES)
        if value is None:
            return None
        return parse_json_object(name, value)

    def day(self, name: str) -> date | None:
        value = self.string(name, max_length=32)
        if value is None:
            return None
        try:
            return date.fromisoformat(value) if len(value) == 10 else _bad_day(name)
        except ValueError:
            return _bad_day(name)


def parse_json_object(name: str, text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise errors.invalid_parameter(name, "must be a JSON object") from exc
    if not isinstance(value, dict):
        raise errors.invalid_parameter(name, "must be a JSON object")
    try:
        # Lone surrogates (\ud800) decode but cannot be stored or sent as UTF-8.
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError as exc:
        raise errors.invalid_parameter(name, "contains invalid Unicode escapes") from exc
    return value


async def read_body(request: Request) -> bytes:
    """The raw request body, refused (413) past MAX_BODY_BYTES before it is all read."""
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > MAX_BODY_BYTES:
        raise _too_large()
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY_BYTES:
            raise _too_large()
    return bytes(body)


def _bad_day(name: str) -> date:
    raise errors.invalid_parameter(name, "must be a date in YYYY-MM-DD format")


def _parse(raw: bytes, where: str) -> list[tuple[str, str]]:
    try:
        text = raw.decode("utf-8")
        return parse_qsl(
            text,
            keep_blank_values=True,
            strict_parsing=False,
            errors="strict",
            max_num_fields=100_000,
        )
    except UnicodeDecodeError as exc:
        raise errors.bad_request(f"The {where} is not valid UTF-8 (after URL decoding)") from exc
    except ValueError as exc:
        raise errors.bad_request(f"The {where} has too many fields") from exc


def _too_large() -> errors.ClarionError:
    return errors.ClarionError(
        413,
        errors.INVALID_PARAMETER,
        f"Request body is larger than {MAX_BODY_BYTES} bytes (1 MB); split the request",
    )
