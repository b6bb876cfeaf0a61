"""Cross-cutting response behaviour: HTTPS awareness behind a proxy, and HSTS."""

from __future__ import annotations

from collections.abc import Callable

from pyramid.config import Configurator
from pyramid.registry import Registry
from pyramid.request import Request
from pyramid.response import Response

from ntq.web import services

Handler = Callable[[Request], Response]

HSTS = "max-age=31536000; includeSubDomains"


def https_tween_factory(handler: Handler, registry: Registry) -> Handler:
    """Honour ``X-Forwarded-Proto`` (links and ``Location`` use the client's scheme)
    and add Strict-Transport-Security when ``NTQ_ENABLE_HSTS`` is on."""
    hsts = services.of(registry).settings.enable_hsts

    def tween(request: Request) -> Response:
        proto = request.headers.get("X-Forwarded-Proto", "").split(",")[0].strip().lower()
        if proto in ("http", "https"):
            request.scheme = proto
        response = handler(request)
        if hsts:
            response.headers["Strict-Transport-Security"] = HSTS
        return response

    return tween


def includeme(config: Configurator) -> None:
    config.add_tween("ntq.web.tweens.https_tween_factory")
