"""``ntq apps``: create, list and revoke applications from the command line."""

from __future__ import annotations

import argparse
import uuid

import orjson

from ntq.config import Settings
from ntq.store import apps, db
from ntq.store.db import make_engine


def run(settings: Settings, args: argparse.Namespace) -> int:
    assert settings.database_url
    engine = make_engine(settings.database_url, pool_size=1, max_overflow=0)
    try:
        with engine.begin() as conn:
            return ACTIONS[args.action](conn, args)
    finally:
        engine.dispose()


def _create(conn: db.Db, args: argparse.Namespace) -> int:
    if apps.by_name(conn, args.name) is not None:
        print(f"ntq: an application named {args.name!r} already exists")
        return 1
    creds = apps.create(conn, args.name)
    _show_credentials(
        creds.name, creds.api_key, creds.signing_secret, args.json, app_id=str(creds.app_id)
    )
    return 0


def _named_app(conn: db.Db, name: str) -> uuid.UUID | None:
    """The application's id; None, after saying so, when there is none of that name."""
    app_id = apps.by_name(conn, name)
    if app_id is None:
        print(f"ntq: no application named {name!r}")
    return app_id


def _add_key(conn: db.Db, args: argparse.Namespace) -> int:
    app_id = _named_app(conn, args.name)
    if app_id is None:
        return 1
    key = apps.add_key(conn, app_id)
    if args.json:
        print(orjson.dumps({"name": args.name, "api_key": key}).decode())
    else:
        print(f"API key for {args.name} (shown only once): {key}")
    return 0


def _show_credentials(name: str, key: str, secret: str, as_json: bool, **extra: str) -> None:
    if as_json:
        data = {"name": name, "api_key": key, "signing_secret": secret, **extra}
        print(orjson.dumps(data).decode())
        return
    print(f"Application: {name}")
    print(f"API key (shown only once): {key}")
    print(f"Signing secret: {secret}")


def _list(conn: db.Db, args: argparse.Namespace) -> int:
    rows = apps.list_all(conn)
    if args.json:
        print(
            orjson.dumps(
                [
                    {
                        "name": r.name,
                        "id": str(r.id),
                        "created": r.created,
                        "revoked": r.revoked,
                        "active_keys": r.keys,
                    }
                    for r in rows
                ],
                option=orjson.OPT_UTC_Z,
            ).decode()
        )
        return 0
    for r in rows:
        state = "revoked" if r.revoked else f"{r.keys} active key(s)"
        print(f"{r.name}\t{r.created:%Y-%m-%d %H:%M}\t{state}")
    return 0


def _keys(conn: db.Db, args: argparse.Namespace) -> int:
    app_id = _named_app(conn, args.name)
    if app_id is None:
        return 1
    keys = apps.keys_of(conn, app_id)
    if args.json:
        print(
            orjson.dumps(
                [{"prefix": k.prefix, "created": k.created, "revoked": k.revoked} for k in keys],
                option=orjson.OPT_UTC_Z,
            ).decode()
        )
        return 0
    for k in keys:
        state = f"revoked {k.revoked:%Y-%m-%d %H:%M}" if k.revoked else "active"
        print(f"{k.prefix}...\t{k.created:%Y-%m-%d %H:%M}\t{state}")
    return 0


def _revoke_key(conn: db.Db, given: str) -> int:
    """Revoke the active key named by ``given``: the whole key, or its prefix as
    ``ntq apps keys`` shows it when that names only one active key."""
    given = given.removesuffix("...")
    found = apps.active_keys_matching(conn, given)
    if len(found) > 1:
        print(f"ntq: {len(found)} active keys start with {given!r}; give the whole key")
        return 1
    if not found or not apps.revoke_key_id(conn, found[0]):
        print("ntq: no such active key")
        return 1
    print("key revoked")
    return 0


def _revoke(conn: db.Db, args: argparse.Namespace) -> int:
    if args.key:
        return _revoke_key(conn, args.key)
    if not args.name:
        print("ntq: name an application, or give --key")
        return 2
    done = apps.revoke(conn, args.name)
    print(f"{args.name} revoked" if done else f"ntq: no application named {args.name!r}")
    return 0 if done else 1


ACTIONS = {"create": _create, "list": _list, "keys": _keys, "revoke": _revoke, "add-key": _add_key}
