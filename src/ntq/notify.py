"""Redis wake-ups and cancel broadcasts: hints, never the truth.

Every failure here is logged and swallowed: PostgreSQL holds every task, and the requeue
poller finds what a lost hint would have announced.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable

import redis
import structlog

from ntq.config import Settings

log = structlog.get_logger(__name__)

# Moves ids whose time has come from the scheduled set to the queue, atomically, so any
# number of workers can run it at once without pushing an id twice.
_PROMOTE = """
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[2])
if #ids > 0 then
  redis.call('ZREM', KEYS[1], unpack(ids))
  redis.call('RPUSH', KEYS[2], unpack(ids))
end
return #ids
"""


def client(url: str, *, blocking: bool = False) -> redis.Redis:
    """A Redis client; ``blocking`` ones have no read timeout (for BLPOP and pub/sub)."""
    return redis.Redis.from_url(
        url,
        socket_connect_timeout=2,
        socket_timeout=None if blocking else 2,
        health_check_interval=30,
    )


class Notifier:
    """Publishes wake-ups (task ids on the queue list) and cancellations."""

    def __init__(self, settings: Settings, conn: redis.Redis) -> None:
        self.redis = conn
        self.queue_key = settings.queue_key
        self.scheduled_key = settings.scheduled_key
        self.cancel_channel = settings.cancel_channel
        self._promote = conn.register_script(_PROMOTE)

    def push(self, ids: Iterable[uuid.UUID | str]) -> bool:
        """Tell workers these tasks are due. False if Redis could not be reached."""
        values = [str(i) for i in ids]
        if not values:
            return True
        try:
            self.redis.rpush(self.queue_key, *values)
        except redis.RedisError as exc:
            log.warning("notify.push_failed", error=str(exc), count=len(values))
            return False
        return True

    def schedule(self, task_id: uuid.UUID | str, when: float) -> None:
        """Wake workers for the task at epoch time ``when`` (the poller is the backstop)."""
        try:
            self.redis.zadd(self.scheduled_key, {str(task_id): when})
        except redis.RedisError as exc:
            log.warning("notify.schedule_failed", error=str(exc))

    def promote_due(self, limit: int = 1000) -> int:
        """Move scheduled ids whose time has come onto the queue; return how many."""
        return int(self._promote(keys=[self.scheduled_key, self.queue_key],
                                 args=[time.time(), limit]))

    def cancel(self, task_id: uuid.UUID | str) -> None:
        """Tell every worker to interrupt a running attempt of the task."""
        try:
            self.redis.publish(self.cancel_channel, str(task_id))
        except redis.RedisError as exc:
            log.warning("notify.cancel_failed", error=str(exc))

    def backlog(self) -> int:
        """Length of the queue list (ids not yet taken by a worker)."""
        return int(self.redis.llen(self.queue_key))
