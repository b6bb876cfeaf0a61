"""Numbers about the queue: per-application ``/stats`` and Prometheus ``/metrics``."""

from __future__ import annotations

from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from pyramid.request import Request
from pyramid.response import Response
from pyramid.view import view_config

from ntq import metrics
from ntq.store import counters, reads
from ntq.web.api.render import json_response
from ntq.web.services import services


@view_config(route_name="stats", request_method="GET")
def stats(request: Request) -> Response:
    """The calling application's counts, backlog, recent outcomes and latency."""
    return json_response(reads.stats(request.db, request.caller.app_id))


@view_config(route_name="metrics", request_method="GET")
def prometheus(request: Request) -> Response:
    """Counters every process adds to (kept in PostgreSQL), backlog gauges, and the
    notifier's own."""
    gauges = {**reads.backlog_gauges(request.db), **services(request).notifier.gauges()}
    body = metrics.render(counters.totals(request.db), gauges)
    return Response(body=body, headers={"Content-Type": CONTENT_TYPE_PLAIN_0_0_4})
