"""Accounts (tenants) and their API keys, and the lookup authentication needs."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Connection, insert, select

from clarion import errors, sids
from clarion.store.clock import utcnow
from clarion.store.tables import account, api_key
from clarion.vault import Vault, digest, new_token


@dataclass(frozen=True, kw_only=True)
class Issued:
    """A SID with the secret that goes with it, shown to the operator exactly once."""

    sid: str
    secret: str


@dataclass(frozen=True, kw_only=True)
class Principal:
    """Who a request authenticates as: always one account."""

    account_id: int
    account_sid: str


def create_account(conn: Connection, vault: Vault, *, friendly_name: str) -> Issued:
    token = new_token()
    now = utcnow()
    sid = sids.new_sid(sids.ACCOUNT)
    conn.execute(
        insert(account).values(
            sid=sid,
            friendly_name=friendly_name,
            auth_token_sealed=vault.seal(token),
            auth_token_digest=digest(token),
            date_created=now,
            date_updated=now,
        )
    )
    return Issued(sid=sid, secret=token)


def create_api_key(conn: Connection, *, account_sid: str, friendly_name: str) -> Issued:
    account_id = conn.scalar(
        select(account.c.id).where(account.c.sid == sids.normalize_sid(account_sid))
    )
    if account_id is None:
        raise errors.not_found(f"account {account_sid} does not exist")
    secret = new_token() + new_token()
    sid = sids.new_sid(sids.API_KEY)
    conn.execute(
        insert(api_key).values(
            sid=sid,
            account_id=account_id,
            friendly_name=friendly_name,
            secret_digest=digest(secret),
            date_created=utcnow(),
        )
    )
    return Issued(sid=sid, secret=secret)


def first_account(conn: Connection, vault: Vault) -> Issued | None:
    """The oldest account with its auth token: what `clarion serve` shows a developer."""
    row = (
        conn.execute(
            select(account.c.sid, account.c.auth_token_sealed).order_by(account.c.id).limit(1)
        )
    ).first()
    return None if row is None else Issued(sid=row.sid, secret=vault.open(row.auth_token_sealed))


def credential_digest(conn: Connection, username: str) -> tuple[Principal, str] | None:
    """The principal a Basic-auth username names and the digest its password must match."""
    if sids.is_sid(username, sids.ACCOUNT):
        stmt = select(
            account.c.id, account.c.sid, account.c.auth_token_digest.label("digest")
        ).where(account.c.sid == sids.normalize_sid(username))
    elif sids.is_sid(username, sids.API_KEY):
        stmt = (
            select(account.c.id, account.c.sid, api_key.c.secret_digest.label("digest"))
            .select_from(api_key.join(account))
            .where(api_key.c.sid == sids.normalize_sid(username))
        )
    else:
        return None
    row = (conn.execute(stmt)).first()
    if row is None:
        return None
    return Principal(account_id=row.id, account_sid=row.sid), row.digest
