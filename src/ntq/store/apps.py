"""Applications and their API keys: create, list, revoke, authenticate.

Keys are 256 random bits, shown once, stored only as their SHA-256 digest. A digest of a
high-entropy key needs no slow KDF, and looking a key up by digest compares nothing
secret byte by byte, so the check takes the same time for every wrong key.
"""

from __future__ import annotations

import hashlib
import secrets
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Select, bindparam, func, insert, select, update

from ntq import signing
from ntq.store.db import Db
from ntq.store.models import api_keys, apps
from ntq.store.uuid7 import uuid7

KEY_PREFIX = "ntq_"

# The live application owning the key whose digest is bound as ``digest`` (no row: an
# unknown or revoked key). The enqueue hot path embeds it in its INSERT.
OWNER: Select[Any] = (
    select(apps.c.id.label("app_id"), apps.c.name)
    .join(api_keys, api_keys.c.app_id == apps.c.id)
    .where(
        api_keys.c.digest == bindparam("digest"),
        api_keys.c.revoked.is_(None),
        apps.c.revoked.is_(None),
    )
)


@dataclass(frozen=True)
class Credentials:
    """What ``create`` returns, once: the only time the key is visible."""

    app_id: uuid.UUID
    name: str
    api_key: str
    signing_secret: str


@dataclass(frozen=True)
class AppInfo:
    id: uuid.UUID
    name: str
    created: datetime
    revoked: datetime | None
    keys: int


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def new_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def create(db: Db, name: str) -> Credentials:
    """A new application with one API key and a signing secret."""
    app_id, secret = uuid7(), signing.new_secret()
    db.execute(insert(apps).values(id=app_id, name=name, signing_secret=secret))
    key = add_key(db, app_id)
    return Credentials(app_id, name, key, secret)


def add_key(db: Db, app_id: uuid.UUID) -> str:
    """Issue another API key for the application; returns the key."""
    key = new_key()
    db.execute(
        insert(api_keys).values(id=uuid7(), app_id=app_id, digest=digest(key), prefix=key[:12])
    )
    return key


def by_name(db: Db, name: str) -> uuid.UUID | None:
    return db.execute(select(apps.c.id).where(apps.c.name == name)).scalar()


def list_all(db: Db) -> list[AppInfo]:
    keys = (
        select(func.count())
        .where(api_keys.c.app_id == apps.c.id, api_keys.c.revoked.is_(None))
        .scalar_subquery()
    )
    stmt = select(
        apps.c.id, apps.c.name, apps.c.created, apps.c.revoked, keys.label("keys")
    ).order_by(apps.c.created)
    return [AppInfo(*row) for row in db.execute(stmt)]


def revoke(db: Db, name: str) -> bool:
    """Revoke the application and every key it has; True if it existed."""
    app_id = by_name(db, name)
    if app_id is None:
        return False
    db.execute(update(apps).where(apps.c.id == app_id).values(revoked=func.now()))
    db.execute(
        update(api_keys)
        .where(api_keys.c.app_id == app_id, api_keys.c.revoked.is_(None))
        .values(revoked=func.now())
    )
    return True


@dataclass(frozen=True)
class KeyInfo:
    """An API key as it can be shown again: its first characters, never the key."""

    prefix: str
    created: datetime
    revoked: datetime | None


def keys_of(db: Db, app_id: uuid.UUID) -> list[KeyInfo]:
    """The application's keys, oldest first."""
    stmt = (
        select(api_keys.c.prefix, api_keys.c.created, api_keys.c.revoked)
        .where(api_keys.c.app_id == app_id)
        .order_by(api_keys.c.created, api_keys.c.id)
    )
    return [KeyInfo(*row) for row in db.execute(stmt)]


def active_keys_matching(db: Db, given: str) -> list[uuid.UUID]:
    """Ids of the active keys that ``given`` names: the whole key, or the prefix that
    ``ntq apps keys`` shows (which may name several keys)."""
    stmt = select(api_keys.c.id).where(
        api_keys.c.revoked.is_(None),
        (api_keys.c.digest == digest(given)) | (api_keys.c.prefix == given),
    )
    return list(db.execute(stmt).scalars())


def revoke_key_id(db: Db, key_id: uuid.UUID) -> bool:
    """Revoke the key; False if it was no longer active."""
    stmt = (
        update(api_keys)
        .where(api_keys.c.id == key_id, api_keys.c.revoked.is_(None))
        .values(revoked=func.now())
        .returning(api_keys.c.id)
    )
    return db.execute(stmt).first() is not None


def authenticate(db: Db, key: str) -> tuple[uuid.UUID, str] | None:
    """The (id, name) of the live application owning ``key``, or None."""
    row = db.execute(OWNER, {"digest": digest(key)}).first()
    return None if row is None else (row.app_id, row.name)
