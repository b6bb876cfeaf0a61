"""API-key authentication: which application is calling."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from pyramid.request import Request

from ntq.store import apps
from ntq.web.api.errors import ApiError
from ntq.web.services import services

# nTorque's clients send NTORQUE_API_KEY (underscore); WSGI folds it to the same environ key
# as NTORQUE-API-KEY, and the web server is configured to keep such headers.
KEY_HEADERS = ("NTQ-API-Key", "NTORQUE-API-KEY")
MAX_KEY_LENGTH = 256


@dataclass(frozen=True)
class Caller:
    """The authenticated application (``None`` ids when authentication is off)."""

    app_id: uuid.UUID | None
    name: str | None


ANONYMOUS = Caller(None, None)


def invalid_key() -> ApiError:
    return ApiError(401, "unauthorized", "the API key is not valid")


def presented_key(request: Request) -> str | None:
    auth: str = request.headers.get("Authorization", "")
    scheme, _, token = auth.partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    for name in KEY_HEADERS:
        value: str | None = request.headers.get(name)
        if value:
            return value.strip()
    return None


def checked_key(request: Request) -> str | None:
    """The presented API key, if it is well-formed; None when authentication is off.
    Raises 401 for a missing or malformed key (whether it is valid is the caller's check)."""
    if not services(request).settings.authenticate:
        return None
    key = presented_key(request)
    if not key:
        raise ApiError(
            401,
            "unauthorized",
            "an API key is required (Authorization: Bearer <key> or NTQ-API-Key: <key>)",
        )
    if len(key) > MAX_KEY_LENGTH or not key.startswith(apps.KEY_PREFIX):
        raise invalid_key()
    return key


def caller(request: Request) -> Caller:
    """The calling application; raises 401 for a missing, malformed or unknown key."""
    key = checked_key(request)
    if key is None:
        return ANONYMOUS
    found = apps.authenticate(request.db, key)
    if found is None:
        raise invalid_key()
    return Caller(*found)
