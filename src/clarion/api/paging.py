"""`PageSize`/`Page`/`PageToken` in, Twilio's `meta` envelope out (reference §2.6).

Page URLs are absolute and built from the request's own scheme and host, because the SDK
follows `next_page_url` verbatim. Filters are echoed into every page URL.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlencode

from starlette.requests import Request

from clarion import errors
from clarion.api.form import Form
from clarion.store.paging import PageRequest, PageResult

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 1000
# Offset paging walks every skipped row; past this, callers must follow page tokens.
MAX_OFFSET = 100_000
_TOKEN = re.compile(r"P([AB])([0-9]{1,18})")
_PAGING = ("PageSize", "Page", "PageToken")


def page_request(query: Form) -> tuple[PageRequest, int]:
    """The store's page request and the page number to report."""
    size = query.integer("PageSize", minimum=1, maximum=MAX_PAGE_SIZE) or DEFAULT_PAGE_SIZE
    number = query.integer("Page", minimum=0, maximum=10**9) or 0
    token = query.string("PageToken", max_length=64)
    if token:
        match = _TOKEN.fullmatch(token)
        if match is None:
            raise errors.invalid_parameter("PageToken", "use the value from a page URL as given")
        key = int(match.group(2))
        if match.group(1) == "A":
            return PageRequest(size=size, after_id=key), number
        return PageRequest(size=size, before_id=key), number
    if number * size > MAX_OFFSET:
        raise errors.invalid_parameter(
            "Page", f"pages beyond row {MAX_OFFSET} are reached by following next_page_url"
        )
    return PageRequest(size=size, offset=number * size), number


def page_body(
    request: Request,
    query: Form,
    *,
    key: str,
    items: list[Any],
    page: PageRequest,
    number: int,
    result: PageResult,
) -> dict[str, Any]:
    base = f"{request.url.scheme}://{request.url.netloc}{request.url.path}"
    filters = [(name, value) for name, value in _pairs(request) if name not in _PAGING]

    def link(page_number: int, token: str | None = None) -> str:
        params = [*filters, ("PageSize", str(page.size)), ("Page", str(page_number))]
        if token is not None:
            params.append(("PageToken", token))
        return f"{base}?{urlencode(params)}"

    current_token = query.string("PageToken", max_length=64)
    return {
        key: items,
        "meta": {
            "page": number,
            "page_size": page.size,
            "first_page_url": link(0),
            "previous_page_url": (
                link(max(number - 1, 0), f"PB{result.first_id}")
                if result.has_previous and result.first_id is not None
                else None
            ),
            "next_page_url": (
                link(number + 1, f"PA{result.last_id}")
                if result.has_next and result.last_id is not None
                else None
            ),
            "key": key,
            "url": link(number, current_token or None),
        },
    }


def _pairs(request: Request) -> list[tuple[str, str]]:
    return list(request.query_params.multi_items())
