"""Provider credentials of an account. Secrets arrive and leave sealed (see `clarion.vault`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, insert, select
from sqlalchemy.engine import RowMapping

from clarion import errors, sids
from clarion.store.clock import utcnow
from clarion.store.owned import delete_owned, update_owned
from clarion.store.paging import PageRequest, PageResult, fetch_page
from clarion.store.tables import account, credential

# Everything a response may show; `secret_sealed` is deliberately absent.
_PUBLIC = select(
    credential.c.id,
    credential.c.sid,
    account.c.sid.label("account_sid"),
    credential.c.type,
    credential.c.friendly_name,
    credential.c.sandbox,
    credential.c.settings,
    credential.c.date_created,
    credential.c.date_updated,
).select_from(credential.join(account))


def create(
    conn: Connection,
    *,
    account_id: int,
    type_: str,
    friendly_name: str | None,
    sandbox: bool | None,
    settings: dict[str, Any],
    secret_sealed: str | None,
) -> RowMapping:
    now = utcnow()
    sid = sids.new_sid(sids.CREDENTIAL)
    conn.execute(
        insert(credential).values(
            sid=sid,
            account_id=account_id,
            type=type_,
            friendly_name=friendly_name,
            sandbox=sandbox,
            settings=settings,
            secret_sealed=secret_sealed,
            date_created=now,
            date_updated=now,
        )
    )
    return get(conn, account_id=account_id, sid=sid)


def get(conn: Connection, *, account_id: int, sid: str) -> RowMapping:
    row = (
        (
            conn.execute(
                _PUBLIC.where(credential.c.account_id == account_id, credential.c.sid == sid)
            )
        )
        .mappings()
        .first()
    )
    if row is None:
        raise errors.not_found()
    return row


def get_sealed_secret(conn: Connection, *, account_id: int, sid: str) -> str | None:
    """The sealed secret, for merging a partial update; raises 404 like `get`."""
    row = (
        conn.execute(
            select(credential.c.secret_sealed).where(
                credential.c.account_id == account_id, credential.c.sid == sid
            )
        )
    ).first()
    if row is None:
        raise errors.not_found()
    return row.secret_sealed  # type: ignore[no-any-return]


def find(conn: Connection, *, account_id: int, sid: str) -> tuple[int, str] | None:
    """Id and type of the account's credential `sid`, for resources that reference one."""
    row = (
        conn.execute(
            select(credential.c.id, credential.c.type).where(
                credential.c.account_id == account_id, credential.c.sid == sid
            )
        )
    ).first()
    return None if row is None else (row.id, row.type)


def list_page(conn: Connection, *, account_id: int, page: PageRequest) -> PageResult:
    return fetch_page(
        conn, _PUBLIC.where(credential.c.account_id == account_id), credential.c.id, page
    )


def update_fields(
    conn: Connection, *, account_id: int, sid: str, values: dict[str, Any]
) -> RowMapping:
    update_owned(conn, credential, account_id=account_id, sid=sid, values=values)
    return get(conn, account_id=account_id, sid=sid)


def remove(conn: Connection, *, account_id: int, sid: str) -> None:
    delete_owned(conn, credential, account_id=account_id, sid=sid)


@dataclass(frozen=True, kw_only=True)
class WebhookCredential:
    account_id: int
    type: str
    secret_sealed: str | None


def for_webhook(conn: Connection, *, sid: str) -> WebhookCredential | None:
    """The credential a provider's webhook names in its URL, whichever account owns it.

    Webhooks carry no account credentials: the caller proves itself with a signature made with
    this credential's secret, so the secret must be found from the URL alone.
    """
    row = conn.execute(
        select(credential.c.account_id, credential.c.type, credential.c.secret_sealed).where(
            credential.c.sid == sid
        )
    ).first()
    if row is None:
        return None
    return WebhookCredential(
        account_id=row.account_id, type=row.type, secret_sealed=row.secret_sealed
    )
