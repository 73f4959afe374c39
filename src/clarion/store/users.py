"""Legacy Users, Segments and SegmentMemberships (reference/twilio-notify.md §3.1).

Twilio replaced them with a binding's identity and tags but kept their URLs in Service `links`;
apps written in 2017 still call them. A user exists once created explicitly or once an identity
registers its first binding.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, delete, exists, func, insert, select

from clarion import errors, sids
from clarion.store.clock import utcnow
from clarion.store.dialect import DIALECTS, insert_or_ignore, insert_or_ignore_on
from clarion.store.paging import PageRequest, PageResult, fetch_page
from clarion.store.tables import account, binding, segment, segment_membership, service, user

MAX_SEGMENTS_PER_USER = 20

_PUBLIC_USER = select(
    user.c.id,
    user.c.sid,
    account.c.sid.label("account_sid"),
    service.c.sid.label("service_sid"),
    user.c.identity,
    user.c.date_created,
    user.c.date_updated,
).select_from(user.join(service).join(account))

_PUBLIC_SEGMENT = select(
    segment.c.id,
    segment.c.sid,
    account.c.sid.label("account_sid"),
    service.c.sid.label("service_sid"),
    segment.c.unique_name,
    segment.c.date_created,
    segment.c.date_updated,
).select_from(segment.join(service).join(account))


# Built once per engine: `ensure` runs on every binding registration.
_ENSURE = {name: insert_or_ignore_on(name, user) for name in DIALECTS}


def ensure(conn: Connection, *, service_id: int, identity: str, now: datetime) -> None:
    """Create the user of `identity` unless it exists (a binding registration implies one)."""
    conn.execute(
        _ENSURE[conn.dialect.name],
        {
            "sid": sids.new_sid(sids.USER),
            "service_id": service_id,
            "identity": identity,
            "date_created": now,
            "date_updated": now,
        },
    )


def create(
    conn: Connection, *, service_id: int, identity: str, segments: Sequence[str]
) -> dict[str, Any]:
    if _user_id(conn, service_id=service_id, identity=identity) is not None:
        raise errors.conflict(errors.USER_EXISTS, f"User with Identity '{identity}' already exists")
    now = utcnow()
    ensure(conn, service_id=service_id, identity=identity, now=now)
    user_id = _user_id(conn, service_id=service_id, identity=identity)
    assert user_id is not None
    for name in dict.fromkeys(segments):
        segment_id = _segment_id(conn, service_id=service_id, name=name, now=now)
        conn.execute(insert(segment_membership).values(user_id=user_id, segment_id=segment_id))
    return get(conn, service_id=service_id, identity=identity)


def get(conn: Connection, *, service_id: int, identity: str) -> dict[str, Any]:
    row = (
        (
            conn.execute(
                _PUBLIC_USER.where(user.c.service_id == service_id, user.c.identity == identity)
            )
        )
        .mappings()
        .first()
    )
    if row is None:
        raise errors.not_found()
    return {**row, "segments": (_segments_of(conn, [row["id"]])).get(row["id"], [])}


def list_page(
    conn: Connection,
    *,
    service_id: int,
    identities: Sequence[str],
    segment_name: str | None,
    page: PageRequest,
) -> tuple[PageResult, dict[int, list[str]]]:
    query = _PUBLIC_USER.where(user.c.service_id == service_id)
    if identities:
        query = query.where(user.c.identity.in_(identities))
    if segment_name is not None:
        query = query.where(
            exists()
            .where(segment_membership.c.user_id == user.c.id)
            .where(segment_membership.c.segment_id == segment.c.id)
            .where(segment.c.unique_name == segment_name)
        )
    result = fetch_page(conn, query, user.c.id, page)
    return result, _segments_of(conn, [int(row["id"]) for row in result.rows])


def remove(conn: Connection, *, service_id: int, identity: str) -> None:
    user_id = _user_id(conn, service_id=service_id, identity=identity)
    if user_id is None:
        raise errors.not_found()
    has_bindings = conn.scalar(
        select(exists().where(binding.c.service_id == service_id, binding.c.identity == identity))
    )
    if has_bindings:
        raise errors.conflict(
            errors.USER_HAS_BINDINGS,
            f"User '{identity}' still has Bindings; delete them before deleting the User",
        )
    conn.execute(delete(user).where(user.c.id == user_id))


def add_membership(conn: Connection, *, service_id: int, identity: str, segment_name: str) -> None:
    user_id = _user_id(conn, service_id=service_id, identity=identity)
    if user_id is None:
        raise errors.not_found()
    segment_id = _segment_id(conn, service_id=service_id, name=segment_name, now=utcnow())
    member = conn.scalar(
        select(
            exists().where(
                segment_membership.c.user_id == user_id,
                segment_membership.c.segment_id == segment_id,
            )
        )
    )
    if member:
        raise errors.conflict(
            errors.ALREADY_SEGMENT_MEMBER,
            f"User '{identity}' is already a member of Segment '{segment_name}'",
        )
    count = conn.scalar(select(func.count()).where(segment_membership.c.user_id == user_id))
    if (count or 0) >= MAX_SEGMENTS_PER_USER:
        raise errors.invalid_parameter(
            "Segment", f"a User can be in at most {MAX_SEGMENTS_PER_USER} Segments"
        )
    conn.execute(insert(segment_membership).values(user_id=user_id, segment_id=segment_id))


def is_member(conn: Connection, *, service_id: int, identity: str, segment_name: str) -> bool:
    return bool(
        conn.scalar(
            select(
                exists()
                .where(user.c.service_id == service_id, user.c.identity == identity)
                .where(segment.c.service_id == service_id, segment.c.unique_name == segment_name)
                .where(segment_membership.c.user_id == user.c.id)
                .where(segment_membership.c.segment_id == segment.c.id)
            )
        )
    )


def remove_membership(
    conn: Connection, *, service_id: int, identity: str, segment_name: str
) -> None:
    user_id = _user_id(conn, service_id=service_id, identity=identity)
    segment_id = conn.scalar(
        select(segment.c.id).where(
            segment.c.service_id == service_id, segment.c.unique_name == segment_name
        )
    )
    if user_id is None or segment_id is None:
        raise errors.not_found()
    result = conn.execute(
        delete(segment_membership).where(
            segment_membership.c.user_id == user_id, segment_membership.c.segment_id == segment_id
        )
    )
    if result.rowcount == 0:
        raise errors.not_found()


def list_segments(conn: Connection, *, service_id: int, page: PageRequest) -> PageResult:
    return fetch_page(
        conn, _PUBLIC_SEGMENT.where(segment.c.service_id == service_id), segment.c.id, page
    )


def _user_id(conn: Connection, *, service_id: int, identity: str) -> int | None:
    value = conn.scalar(
        select(user.c.id).where(user.c.service_id == service_id, user.c.identity == identity)
    )
    return None if value is None else int(value)


def _segment_id(conn: Connection, *, service_id: int, name: str, now: datetime) -> int:
    """The segment called `name`, created on first use (Segments have no create operation)."""
    conn.execute(
        insert_or_ignore(conn, segment).values(
            sid=sids.new_sid(sids.SEGMENT),
            service_id=service_id,
            unique_name=name,
            date_created=now,
            date_updated=now,
        )
    )
    segment_id = conn.scalar(
        select(segment.c.id).where(
            segment.c.service_id == service_id, segment.c.unique_name == name
        )
    )
    return int(segment_id)  # type: ignore[arg-type]


def _segments_of(conn: Connection, user_ids: Sequence[int]) -> dict[int, list[str]]:
    names: dict[int, list[str]] = {}
    if user_ids:
        rows = conn.execute(
            select(segment_membership.c.user_id, segment.c.unique_name)
            .select_from(segment_membership.join(segment))
            .where(segment_membership.c.user_id.in_(user_ids))
            .order_by(segment_membership.c.user_id, segment.c.unique_name)
        )
        for user_id, name in rows:
            names.setdefault(user_id, []).append(name)
    return names


def search_page(
    conn: Connection,
    *,
    service_id: int,
    identity_prefix: str | None,
    segment_name: str | None,
    page: PageRequest,
) -> tuple[PageResult, dict[int, list[str]]]:
    """One page of a service's users, each with its number of bindings, and their segments.

    The API's user list matches whole identities only; an operator looks a user up by the
    start of one, as on the bindings page (clarion.store.bindings.search_page).
    """
    bindings = (
        select(func.count())
        .where(binding.c.service_id == user.c.service_id, binding.c.identity == user.c.identity)
        .scalar_subquery()
    )
    query = select(
        user.c.id, user.c.identity, user.c.date_created, bindings.label("bindings")
    ).where(user.c.service_id == service_id)
    if identity_prefix:
        query = query.where(user.c.identity.startswith(identity_prefix, autoescape=True))
    if segment_name:
        query = query.where(
            exists()
            .where(segment_membership.c.user_id == user.c.id)
            .where(segment_membership.c.segment_id == segment.c.id)
            .where(segment.c.service_id == service_id, segment.c.unique_name == segment_name)
        )
    found = fetch_page(conn, query, user.c.id, page)
    identities = [str(row["identity"]) for row in found.rows]
    if not identities:
        return found, {}
    # The store's own list, for exactly these identities, brings their segments.
    _, segments = list_page(
        conn,
        service_id=service_id,
        identities=identities,
        segment_name=None,
        page=PageRequest(size=len(identities)),
    )
    return found, segments
