"""Services (Twilio's `IS…`): an application with its credentials and defaults."""

from __future__ import annotations

from typing import Any

from sqlalchemy import insert, select
from sqlalchemy.engine import RowMapping
from sqlalchemy.ext.asyncio import AsyncConnection

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


async def create(conn: AsyncConnection, *, account_id: int, values: dict[str, Any]) -> RowMapping:
    now = utcnow()
    sid = sids.new_sid(sids.SERVICE)
    await conn.execute(
        insert(service).values(
            sid=sid, account_id=account_id, date_created=now, date_updated=now, **values
        )
    )
    return await get(conn, account_id=account_id, sid=sid)


async def get(conn: AsyncConnection, *, account_id: int, sid: str) -> RowMapping:
    row = (
        (
            await conn.execute(
                _PUBLIC.where(service.c.account_id == account_id, service.c.sid == sid)
            )
        )
        .mappings()
        .first()
    )
    if row is None:
        raise errors.not_found()
    return row


async def resolve(conn: AsyncConnection, *, account_id: int, sid: str) -> int:
    """The internal id of the account's service `sid`; 404 when it is not the caller's."""
    service_id = await conn.scalar(
        select(service.c.id).where(service.c.account_id == account_id, service.c.sid == sid)
    )
    if service_id is None:
        raise errors.not_found()
    return int(service_id)


async def list_page(
    conn: AsyncConnection, *, account_id: int, friendly_name: str | None, page: PageRequest
) -> PageResult:
    query = _PUBLIC.where(service.c.account_id == account_id)
    if friendly_name is not None:
        query = query.where(service.c.friendly_name == friendly_name)
    return await fetch_page(conn, query, service.c.id, page)


async def update_fields(
    conn: AsyncConnection, *, account_id: int, sid: str, values: dict[str, Any]
) -> RowMapping:
    await update_owned(conn, service, account_id=account_id, sid=sid, values=values)
    return await get(conn, account_id=account_id, sid=sid)


async def remove(conn: AsyncConnection, *, account_id: int, sid: str) -> None:
    await delete_owned(conn, service, account_id=account_id, sid=sid)
