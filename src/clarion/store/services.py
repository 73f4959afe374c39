"""Services (Twilio's `IS…`): an application with its credentials and defaults."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, bindparam, insert, select
from sqlalchemy.engine import RowMapping

from clarion import errors, sids
from clarion.store.clock import utcnow
from clarion.store.owned import delete_owned, update_owned
from clarion.store.paging import PageRequest, PageResult, fetch_page
from clarion.store.tables import SERVICE_CREDENTIAL_COLUMNS, account, credential, service


def _credential_sid(column: str) -> Any:
    """The SID of the credential a service column points at, as `<name>_sid`."""
    return (
        select(credential.c.sid)
        .where(credential.c.id == service.c[column])
        .scalar_subquery()
        .label(column.removesuffix("_id") + "_sid")
    )


_PUBLIC = select(
    service,
    account.c.sid.label("account_sid"),
    *(_credential_sid(column) for column in SERVICE_CREDENTIAL_COLUMNS),
).select_from(service.join(account))


def create(conn: Connection, *, account_id: int, values: dict[str, Any]) -> RowMapping:
    now = utcnow()
    sid = sids.new_sid(sids.SERVICE)
    conn.execute(
        insert(service).values(
            sid=sid, account_id=account_id, date_created=now, date_updated=now, **values
        )
    )
    return get(conn, account_id=account_id, sid=sid)


def get(conn: Connection, *, account_id: int, sid: str) -> RowMapping:
    row = (
        (conn.execute(_PUBLIC.where(service.c.account_id == account_id, service.c.sid == sid)))
        .mappings()
        .first()
    )
    if row is None:
        raise errors.not_found()
    return row


# Built once: binding registration, the hot write path, runs it every time.
_PROTOCOL_DEFAULTS = select(
    service.c.id,
    service.c.default_apn_notification_protocol_version,
    service.c.default_gcm_notification_protocol_version,
    service.c.default_fcm_notification_protocol_version,
    service.c.default_alexa_notification_protocol_version,
).where(service.c.account_id == bindparam("account_id"), service.c.sid == bindparam("sid"))


def protocol_defaults(conn: Connection, *, account_id: int, sid: str) -> RowMapping:
    """The service's id and default notification protocol versions, for a binding registration."""
    row = (
        conn.execute(_PROTOCOL_DEFAULTS, {"account_id": account_id, "sid": sid}).mappings().first()
    )
    if row is None:
        raise errors.not_found()
    return row


_RESOLVE = select(service.c.id).where(
    service.c.account_id == bindparam("account_id"), service.c.sid == bindparam("sid")
)


def resolve(conn: Connection, *, account_id: int, sid: str) -> int:
    """The internal id of the account's service `sid`; 404 when it is not the caller's."""
    service_id = conn.scalar(_RESOLVE, {"account_id": account_id, "sid": sid})
    if service_id is None:
        raise errors.not_found()
    return int(service_id)


def list_page(
    conn: Connection, *, account_id: int, friendly_name: str | None, page: PageRequest
) -> PageResult:
    query = _PUBLIC.where(service.c.account_id == account_id)
    if friendly_name is not None:
        query = query.where(service.c.friendly_name == friendly_name)
    return fetch_page(conn, query, service.c.id, page)


def update_fields(
    conn: Connection, *, account_id: int, sid: str, values: dict[str, Any]
) -> RowMapping:
    update_owned(conn, service, account_id=account_id, sid=sid, values=values)
    return get(conn, account_id=account_id, sid=sid)


def remove(conn: Connection, *, account_id: int, sid: str) -> None:
    delete_owned(conn, service, account_id=account_id, sid=sid)
