"""Time-ordered, unguessable task ids (UUIDv7: 48 bits of milliseconds, 74 random bits)."""

from __future__ import annotations

import uuid

from uuid6 import uuid7 as _uuid7


def uuid7() -> uuid.UUID:
    """A new UUIDv7 as a standard :class:`uuid.UUID`."""
    return uuid.UUID(int=_uuid7().int)
