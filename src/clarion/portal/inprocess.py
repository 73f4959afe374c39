"""The portal's writes go through the API itself, in-process, as the signed-in account.

Creating a service, rotating a credential or sending a notification from the browser then
validates, stores and answers exactly as the same call over HTTP would — one implementation,
one set of error messages — without a network hop or a stored secret: the request carries the
session's principal under `clarion.api.context.SIGNED_IN`, which only server code can set.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlencode

import msgspec
from starlette.requests import Request
from starlette.types import ASGIApp, Message

from clarion.api.context import SIGNED_IN
from clarion.store.accounts import Principal


@dataclass(frozen=True, kw_only=True)
class Answer:
    status: int
    body: dict[str, Any]

    @property
    def ok(self) -> bool:
        return self.status < 400

    @property
    def message(self) -> str:
        """The API's error message, which names the parameter to fix."""
        return str(self.body.get("message", f"The request failed ({self.status})"))


async def call(
    api: ASGIApp,
    request: Request,
    principal: Principal,
    *,
    method: str,
    path: str,
    params: Sequence[tuple[str, str]] = (),
) -> Answer:
    """`method /v1{path}` with form `params`, answered by the API app `api`."""
    body = urlencode(list(params)).encode()
    raw_path = "/v1" + path
    scope: dict[str, Any] = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": request.url.scheme,
        "server": request.scope.get("server"),
        "client": request.scope.get("client"),
        "root_path": "",
        "path": unquote(raw_path),
        "raw_path": raw_path.encode(),
        "query_string": b"",
        "headers": [
            (b"host", request.headers.get("host", "localhost").encode("latin-1")),
            (b"content-type", b"application/x-www-form-urlencoded"),
            (b"content-length", str(len(body)).encode()),
        ],
        "state": dict(request.scope.get("state", {})),
        SIGNED_IN: principal,
    }
    sent = False
    status = 500
    chunks: list[bytes] = []

    async def receive() -> Message:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: Message) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = int(message["status"])
        elif message["type"] == "http.response.body":
            chunks.append(message.get("body", b""))

    await api(scope, receive, send)
    raw = b"".join(chunks)
    decoded = msgspec.json.decode(raw) if raw else {}
    return Answer(status=status, body=decoded if isinstance(decoded, dict) else {})
