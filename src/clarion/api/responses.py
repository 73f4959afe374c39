"""JSON responses in Twilio's shape: snake_case fields, `YYYY-MM-DDTHH:MM:SSZ` dates, errors."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import msgspec
from starlette.responses import Response

from clarion.errors import ClarionError

_encoder = msgspec.json.Encoder()


def json_response(content: Any, status: int = 200) -> Response:
    return Response(_encoder.encode(content), status_code=status, media_type="application/json")


def no_content() -> Response:
    return Response(status_code=204)


def error_response(error: ClarionError) -> Response:
    response = json_response(
        {
            "code": error.code,
            "message": error.message,
            "more_info": error.more_info,
            "status": error.status,
        },
        status=error.status,
    )
    if error.status == 401:
        response.headers["WWW-Authenticate"] = 'Basic realm="Clarion"'
    return response


def timestamp(value: datetime | None) -> str | None:
    """Exactly the format twilio-python parses; anything else reaches users as a raw string."""
    return None if value is None else value.strftime("%Y-%m-%dT%H:%M:%SZ")
