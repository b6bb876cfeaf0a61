"""Numbers about the queue: per-application ``/stats`` and Prometheus ``/metrics``."""

from __future__ import annotations

import redis
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from pyramid.request import Request
from pyramid.response import Response
from pyramid.view import view_config

from ntq import metrics, notify
from ntq.store import counters, reads
from ntq.web.api.render import json_response


@view_config(route_name="stats", request_method="GET")
def stats(request: Request) -> Response:
    """The calling application's counts, backlog, recent outcomes and latency."""
    return json_response(reads.stats(request.db, request.caller.app_id))


@view_config(route_name="metrics", request_method="GET")
def prometheus(request: Request) -> Response:
    """Counters every process adds to (kept in PostgreSQL), backlog gauges, and the length
    of Redis's queue when Redis answers."""
    gauges = {**reads.backlog_gauges(request.db), **_redis_gauges(request.registry.ntq_notifier)}
    body = metrics.render(counters.totals(request.db), gauges)
    return Response(body=body, headers={"Content-Type": CONTENT_TYPE_PLAIN_0_0_4})


def _redis_gauges(notifier: notify.Notifier) -> dict[str, float]:
    try:
        return {"redis_queue_length": notifier.backlog(), "redis_up": 1}
    except redis.RedisError:
        return {"redis_up": 0}
