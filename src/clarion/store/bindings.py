"""Bindings: one address of one identity on one channel, with its tags.

Built-in tags are not stored: `all` matches every binding and a binding type's name matches
bindings of that type, so the filter needs no list of types.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Connection,
    Row,
    bindparam,
    delete,
    exists,
    func,
    insert,
    or_,
    select,
    update,
)

from clarion import errors, sids
from clarion.store import users
from clarion.store.clock import utcnow
from clarion.store.dialect import DIALECTS, insert_or_ignore_on
from clarion.store.paging import PageRequest, PageResult, fetch_page
from clarion.store.tables import account, binding, binding_tag, credential, service

# Twilio's documented limit: "Up to 20 Bindings can be created for the same Identity".
MAX_BINDINGS_PER_IDENTITY = 20


@dataclass(frozen=True, kw_only=True)
class Registration:
    identity: str
    binding_type: str
    address: str
    tags: Sequence[str]
    notification_protocol_version: str | None
    credential_id: int | None
    endpoint: str | None


_PUBLIC = select(
    binding.c.id,
    binding.c.sid,
    account.c.sid.label("account_sid"),
    service.c.sid.label("service_sid"),
    select(credential.c.sid)
    .where(credential.c.id == binding.c.credential_id)
    .scalar_subquery()
    .label("credential_sid"),
    binding.c.identity,
    binding.c.binding_type,
    binding.c.address,
    binding.c.notification_protocol_version,
    binding.c.endpoint,
    binding.c.inactive_since,
    binding.c.inactive_reason,
    binding.c.date_created,
    binding.c.date_updated,
).select_from(binding.join(service).join(account))


def has_tag(tag: str) -> ColumnElement[bool]:
    """Matches bindings carrying `tag`, explicitly or as a built-in tag."""
    if tag == "all":
        return binding.c.id.is_not(None)
    explicit = exists().where(binding_tag.c.binding_id == binding.c.id, binding_tag.c.tag == tag)
    return or_(binding.c.binding_type == tag, explicit)


# Registration is the hot write path: its statements are built once, so each call only binds
# parameters (building and cache-keying a statement costs more than running it on SQLite).
_FIND_ADDRESS = select(
    binding.c.id, binding.c.sid, binding.c.identity, binding.c.date_created
).where(
    binding.c.service_id == bindparam("service_id"),
    binding.c.binding_type == bindparam("binding_type"),
    binding.c.address == bindparam("address"),
)
_COUNT_IDENTITY = select(func.count()).where(
    binding.c.service_id == bindparam("service_id"), binding.c.identity == bindparam("identity")
)
# Ignoring a conflict (and returning no id) lets a concurrent registration of the same address
# by another process turn into a move instead of an error.
_INSERT = {name: insert_or_ignore_on(name, binding).returning(binding.c.id) for name in DIALECTS}
_MOVE = update(binding).where(binding.c.id == bindparam("binding_id"))
_CLEAR_TAGS = delete(binding_tag).where(binding_tag.c.binding_id == bindparam("binding_id"))
_ADD_TAG = insert(binding_tag)


def register(conn: Connection, *, service_id: int, reg: Registration) -> dict[str, Any]:
    """Create the binding, or move an already registered address to this identity and tags.

    Returns the binding's own fields; the caller knows the account, service and credential SIDs.

    Moving keeps the SID: a device that changes hands must stop receiving the previous
    owner's notifications, and the app that re-registers it keeps a stable handle.
    """
    now = utcnow()
    values = {
        "identity": reg.identity,
        "notification_protocol_version": reg.notification_protocol_version,
        "credential_id": reg.credential_id,
        "endpoint": reg.endpoint,
        "date_updated": now,
        # An app registering its address again is alive: a retired binding comes back.
        "inactive_since": None,
        "inactive_reason": None,
    }
    existing = _find_address(conn, service_id=service_id, reg=reg)
    binding_id = None
    if existing is None:
        sid, date_created = sids.new_sid(sids.BINDING), now
        binding_id = conn.scalar(
            _INSERT[conn.dialect.name],
            {
                "sid": sid,
                "service_id": service_id,
                "binding_type": reg.binding_type,
                "address": reg.address,
                "date_created": date_created,
                **values,
            },
        )
        if binding_id is None:
            # Another process registered the same address since we looked: move it instead.
            existing = _find_address(conn, service_id=service_id, reg=reg)
            assert existing is not None
    if existing is not None:
        binding_id, sid, date_created = existing.id, existing.sid, existing.date_created
        conn.execute(_MOVE, {"binding_id": binding_id, **values})
        conn.execute(_CLEAR_TAGS, {"binding_id": binding_id})
    if reg.tags:
        conn.execute(_ADD_TAG, [{"binding_id": binding_id, "tag": tag} for tag in reg.tags])
    users.ensure(conn, service_id=service_id, identity=reg.identity, now=now)
    # Built from what was written rather than read back: registration is the hot write path.
    return {
        "id": binding_id,
        "sid": sid,
        "identity": reg.identity,
        "binding_type": reg.binding_type,
        "address": reg.address,
        "notification_protocol_version": reg.notification_protocol_version,
        "endpoint": reg.endpoint,
        "inactive_since": None,
        "inactive_reason": None,
        "date_created": date_created,
        "date_updated": now,
        "tags": sorted(reg.tags),
    }


def _find_address(
    conn: Connection, *, service_id: int, reg: Registration
) -> Row[Any, Any, Any, Any] | None:
    """The binding already registered at `reg`'s address, checking `reg` fits its identity."""
    existing = conn.execute(
        _FIND_ADDRESS,
        {"service_id": service_id, "binding_type": reg.binding_type, "address": reg.address},
    ).first()
    if existing is None or existing.identity != reg.identity:
        count = conn.scalar(_COUNT_IDENTITY, {"service_id": service_id, "identity": reg.identity})
        if (count or 0) >= MAX_BINDINGS_PER_IDENTITY:
            raise errors.invalid_parameter(
                "Identity",
                f"identity already has {MAX_BINDINGS_PER_IDENTITY} bindings, the most one identity "
                "can have; delete one first",
            )
    return existing


def get(
    conn: Connection, *, service_id: int, sid: str, identity: str | None = None
) -> dict[str, Any]:
    query = _PUBLIC.where(binding.c.service_id == service_id, binding.c.sid == sid)
    if identity is not None:
        query = query.where(binding.c.identity == identity)
    row = conn.execute(query).mappings().first()
    if row is None:
        raise errors.not_found()
    return {**row, "tags": _tags(conn, [row["id"]]).get(row["id"], [])}


def list_page(
    conn: Connection,
    *,
    service_id: int,
    identities: Sequence[str],
    tags: Sequence[str],
    created_from: datetime | None,
    created_before: datetime | None,
    active: bool | None = None,
    page: PageRequest,
) -> tuple[PageResult, dict[int, list[str]]]:
    """One page of bindings and the explicit tags of each, by binding id.

    `active` filters on whether a provider has retired the address (None: both).
    """
    query = _PUBLIC.where(binding.c.service_id == service_id)
    if active is not None:
        query = query.where(
            binding.c.inactive_since.is_(None) if active else binding.c.inactive_since.is_not(None)
        )
    if identities:
        query = query.where(binding.c.identity.in_(identities))
    for tag in tags:
        query = query.where(has_tag(tag))
    if created_from is not None:
        query = query.where(binding.c.date_created >= created_from)
    if created_before is not None:
        query = query.where(binding.c.date_created < created_before)
    result = fetch_page(conn, query, binding.c.id, page)
    return result, _tags(conn, [int(row["id"]) for row in result.rows])


def remove(conn: Connection, *, service_id: int, sid: str, identity: str | None = None) -> None:
    stmt = delete(binding).where(binding.c.service_id == service_id, binding.c.sid == sid)
    if identity is not None:
        stmt = stmt.where(binding.c.identity == identity)
    if (conn.execute(stmt)).rowcount == 0:
        raise errors.not_found()


def _tags(conn: Connection, binding_ids: Sequence[int]) -> dict[int, list[str]]:
    tags: dict[int, list[str]] = {}
    if binding_ids:
        rows = conn.execute(
            select(binding_tag.c.binding_id, binding_tag.c.tag).where(
                binding_tag.c.binding_id.in_(binding_ids)
            )
        )
        for binding_id, tag in rows:
            tags.setdefault(binding_id, []).append(tag)
    # Sorted here, not by the database's collation, so every engine answers alike.
    return {binding_id: sorted(names) for binding_id, names in tags.items()}


def search_page(
    conn: Connection,
    *,
    service_id: int,
    identity_prefix: str | None,
    address_prefix: str | None,
    tag: str | None,
    binding_type: str | None,
    active: bool | None,
    page: PageRequest,
) -> tuple[PageResult, dict[int, list[str]]]:
    """The portal's binding search: `list_page` plus prefixes of identity and address and a
    binding type, so an operator can find a device from the start of its token or number."""
    query = _PUBLIC.where(binding.c.service_id == service_id)
    if identity_prefix:
        query = query.where(binding.c.identity.startswith(identity_prefix, autoescape=True))
    if address_prefix:
        query = query.where(binding.c.address.startswith(address_prefix, autoescape=True))
    if tag:
        query = query.where(has_tag(tag))
    if binding_type:
        query = query.where(binding.c.binding_type == binding_type)
    if active is not None:
        query = query.where(
            binding.c.inactive_since.is_(None) if active else binding.c.inactive_since.is_not(None)
        )
    result = fetch_page(conn, query, binding.c.id, page)
    return result, _tags(conn, [int(row["id"]) for row in result.rows])
