"""Twilio-style errors: the codes Notify clients already handle, raised from any layer.

Every error a caller can see is a `ClarionError`; the API renders it as
`{"code", "message", "more_info", "status"}` (reference/twilio-notify.md §2.7). Messages say what
to fix and never echo secrets.
"""

from __future__ import annotations

# Generic Twilio codes.
INVALID_PARAMETER = 20001
AUTHENTICATE = 20003
FORBIDDEN = 20403
NOT_FOUND = 20404
METHOD_NOT_ALLOWED = 20004
INTERNAL = 20500
TOO_MANY_REQUESTS = 20429

# Notify codes (reference/twilio-notify.md §7).
INVALID_BINDING = 52001
INVALID_CREDENTIAL_SID = 52002
INVALID_CREDENTIAL_TYPE = 52003
INVALID_FCM_SECRET = 52101
INVALID_APN_CREDENTIALS = 52131
USER_EXISTS = 52304
ALREADY_SEGMENT_MEMBER = 52305
USER_HAS_BINDINGS = 52306


class ClarionError(Exception):
    """An error with the HTTP status and Twilio code the caller will receive."""

    def __init__(self, status: int, code: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message

    @property
    def more_info(self) -> str:
        return f"https://www.twilio.com/docs/errors/{self.code}"


def invalid_parameter(name: str, problem: str) -> ClarionError:
    return ClarionError(400, INVALID_PARAMETER, f"Parameter '{name}' is invalid: {problem}")


def missing_parameter(name: str) -> ClarionError:
    return ClarionError(
        400, INVALID_PARAMETER, f"Missing required parameter {name} in the post body"
    )


def bad_request(message: str, code: int = INVALID_PARAMETER) -> ClarionError:
    return ClarionError(400, code, message)


def not_found(message: str = "The requested resource was not found") -> ClarionError:
    """Also what another account's SID gets: existence must not leak across accounts.

    The API replaces the message with Twilio's, naming the requested path.
    """
    return ClarionError(404, NOT_FOUND, message)


def forbidden(message: str) -> ClarionError:
    return ClarionError(403, FORBIDDEN, message)


def conflict(code: int, message: str) -> ClarionError:
    return ClarionError(409, code, message)


def authenticate() -> ClarionError:
    return ClarionError(401, AUTHENTICATE, "Authenticate")
