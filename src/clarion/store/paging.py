"""Keyset pagination over internal ids: stable order, constant cost on any page.

`Page` offsets (the SDK's `page(page_number=…)`) are served too, capped so a caller cannot make
the database walk millions of rows; page tokens (`PA<id>` forward, `PB<id>` backward) are what
`next_page_url`/`previous_page_url` carry.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, Connection, Select
from sqlalchemy.engine import RowMapping


@dataclass(frozen=True, kw_only=True)
class PageRequest:
    size: int
    after_id: int | None = None
    before_id: int | None = None
    offset: int = 0


@dataclass(frozen=True, kw_only=True)
class PageResult:
    rows: Sequence[RowMapping]
    has_next: bool
    has_previous: bool

    @property
    def first_id(self) -> int | None:
        return int(self.rows[0]["id"]) if self.rows else None

    @property
    def last_id(self) -> int | None:
        return int(self.rows[-1]["id"]) if self.rows else None


def fetch_page(
    conn: Connection, query: Select[Any], id_column: ColumnElement[int], page: PageRequest
) -> PageResult:
    """Run `query` (which must select `id`) for one page in ascending id order."""
    if page.before_id is not None:
        stmt = query.where(id_column < page.before_id).order_by(id_column.desc())
        rows = list((conn.execute(stmt.limit(page.size + 1))).mappings())
        has_previous = len(rows) > page.size
        return PageResult(rows=rows[: page.size][::-1], has_next=True, has_previous=has_previous)
    if page.after_id is not None:
        stmt = query.where(id_column > page.after_id).order_by(id_column)
        has_previous = True
    else:
        stmt = query.order_by(id_column).offset(page.offset)
        has_previous = page.offset > 0
    rows = list((conn.execute(stmt.limit(page.size + 1))).mappings())
    return PageResult(
        rows=rows[: page.size], has_next=len(rows) > page.size, has_previous=has_previous
    )
