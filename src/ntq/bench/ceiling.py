"""What this machine can do without ntq: the ceilings ntq's figures are measured against.

Run as a child process of ``ntq bench``:

- ``python -m ntq.bench.ceiling wsgi`` / ``pyramid``: gunicorn with ntq's web options and
  gevent workers (``PORT``, ``WEB_CONCURRENCY``), serving an app that reads the request body
  and answers a constant 201: a bare WSGI function, or a Pyramid view. The load generator
  drives it exactly as it drives ``POST /``.
- ``python -m ntq.bench.ceiling deliver URL COUNT CONCURRENCY``: ntq's own delivery code
  (:func:`ntq.delivery.call`, requests with the address guard, signed headers) from
  CONCURRENCY greenlets, COUNT calls, no queue; prints ``{"calls": n, "seconds": s,
  "errors": n}``. One worker process can deliver no faster than this.

PostgreSQL's ceiling is measured with ``pgbench`` by :mod:`ntq.bench.scenarios`.
"""

from __future__ import annotations

import sys
import time
import uuid
from collections.abc import Callable, Iterable
from typing import Any

import gevent
import orjson

ANSWER = b'{"ok":true}'
SECRET = "whsec_" + "A" * 43 + "="


def hello(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    """The smallest fair WSGI app: read the body, answer a constant."""
    environ["wsgi.input"].read()
    start_response(
        "201 Created", [("Content-Type", "application/json"), ("Content-Length", str(len(ANSWER)))]
    )
    return [ANSWER]


def pyramid_hello() -> Any:
    """A Pyramid app with one view that reads the body and answers a constant."""
    from pyramid.config import Configurator
    from pyramid.request import Request
    from pyramid.response import Response

    def view(request: Request) -> Response:
        request.body  # noqa: B018  (read it, as a real view would)
        return Response(body=ANSWER, status=201, content_type="application/json")

    config = Configurator()
    config.add_route("root", "/")
    config.add_view(view, route_name="root")
    return config.make_wsgi_app()


def serve(kind: str) -> None:
    """gunicorn as ``ntq web`` configures it, serving the constant app of ``kind``."""
    from ntq.config import load_settings
    from ntq.web.server import WebServer, options

    settings = load_settings()
    app = hello if kind == "wsgi" else pyramid_hello()

    class Constant(WebServer):
        def load(self) -> Any:
            return app

    Constant(settings, options(settings, "127.0.0.1", settings.web_concurrency)).run()


def deliver(url: str, count: int, concurrency: int) -> dict[str, Any]:
    """``count`` signed POSTs to ``url`` through ntq's delivery code from ``concurrency``
    greenlets sharing one session, as a worker process makes them."""
    from ntq import delivery, signing
    from ntq.config import load_settings

    settings = load_settings()
    session = delivery.make_session(settings, concurrency)
    state = {"next": 0, "errors": 0}
    body = b'{"t":0}'

    def loop() -> None:
        while state["next"] < count:
            state["next"] += 1
            task_id = str(uuid.uuid4())
            headers = {
                "Content-Type": "application/json",
                "User-Agent": delivery.USER_AGENT,
                "NTQ-Task-Id": task_id,
                **signing.headers(SECRET, task_id, int(time.time()), body),
            }
            result = delivery.call(
                session, "POST", url, headers, body, 30.0, settings.max_response_bytes
            )
            if result.status_code != 200:
                state["errors"] += 1

    began = time.monotonic()
    gevent.joinall([gevent.spawn(loop) for _ in range(concurrency)], raise_error=True)
    return {
        "calls": count,
        "seconds": round(time.monotonic() - began, 3),
        "errors": state["errors"],
    }


def main() -> None:
    from ntq.green import patch

    patch()  # as ``ntq web`` and ``ntq worker`` do, before requests or redis are imported
    kind, *args = sys.argv[1:] or [""]
    if kind == "deliver" and len(args) == 3:
        print(orjson.dumps(deliver(args[0], int(args[1]), int(args[2]))).decode(), flush=True)
    elif kind in ("wsgi", "pyramid"):
        serve(kind)
    else:
        raise SystemExit(
            "usage: python -m ntq.bench.ceiling wsgi | pyramid | deliver URL COUNT CONCURRENCY"
        )


if __name__ == "__main__":
    main()
