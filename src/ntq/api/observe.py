"""Numbers about the queue: per-application ``/stats`` and Prometheus ``/metrics``."""

from __future__ import annotations

import redis
from pyramid.request import Request
from pyramid.response import Response
from pyramid.view import view_config

from ntq import metrics, reads
from ntq.api.render import json_response


@view_config(route_name="stats", request_method="GET")
def stats(request: Request) -> Response:
    """The calling application's counts, backlog, recent outcomes and latency."""
    return json_response(reads.stats(request.db, request.caller.app_id))


@view_config(route_name="metrics", request_method="GET")
def prometheus(request: Request) -> Response:
    """Counters shared by every process (kept in Redis) and backlog gauges (PostgreSQL)."""
    notifier = request.registry.ntq_notifier
    gauges = reads.backlog_gauges(request.db)
    try:
        raw = notifier.redis.hgetall(request.registry.ntq_settings.metrics_key)
        gauges["redis_queue_length"] = notifier.backlog()
        gauges["redis_up"] = 1
    except redis.RedisError:
        raw, gauges["redis_up"] = {}, 0
    response = Response(body=metrics.render(raw, gauges).encode())
    response.headers["Content-Type"] = "text/plain; version=0.0.4; charset=utf-8"
    return response
