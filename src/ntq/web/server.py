"""``ntq web``: the API under gunicorn with gevent workers."""

from __future__ import annotations

import errno
import resource
import socket
from typing import Any

import orjson
import structlog
from gunicorn import glogging, util
from gunicorn.app.base import BaseApplication

from ntq.config import ConfigError, Settings

log = structlog.get_logger(__name__)
BACKLOG = 2048  # gunicorn's default


class PortInUse(ConfigError):
    """The port to listen on is taken."""


def listen(host: str, port: int) -> socket.socket:
    """A listening socket on ``host:port``; :class:`PortInUse` says how to pick another."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        sock = socket.socket(family, kind, proto)
    except OSError as exc:
        raise ConfigError(f"cannot listen on {host} port {port}: {exc.strerror}") from exc
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as gunicorn binds
    try:
        sock.bind(address)
    except OSError as exc:
        sock.close()
        if exc.errno != errno.EADDRINUSE:
            raise ConfigError(f"cannot listen on {host} port {port}: {exc.strerror}") from exc
        raise PortInUse(
            f"port {port} on {host} is already in use (by another ntq, or "
            f"another program); pick another with --port N or PORT=N"
        ) from exc
    sock.listen(BACKLOG)
    return sock


# Connections one worker holds at once. Every slow client holds one until its body
# deadline (NTQ_BODY_TIMEOUT), so this is sized for thousands of them, not for the
# request rate; a greenlet waiting on a socket costs a few kilobytes.
WORKER_CONNECTIONS = 10_000
# File descriptors a worker needs besides its clients: the listening socket, the
# PostgreSQL pools, Redis, log files.
RESERVED_FDS = 256


def write_json_error(sock: Any, status_int: int, reason: str, mesg: str) -> None:
    """gunicorn's answer to a request it cannot parse (bad framing, oversized headers),
    as ntq's JSON error instead of an HTML page."""
    code = reason.lower().replace(" ", "_") or "bad_request"
    body = orjson.dumps({"error": {"code": code, "message": mesg or reason}})
    head = (
        f"HTTP/1.1 {status_int} {reason}\r\nConnection: close\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    util.write_nonblock(sock, head.encode("latin-1") + body)


# gunicorn's workers call util.write_error for requests that never reach the app.
util.write_error = write_json_error


class PropagatingLogger(glogging.Logger):  # type: ignore[misc]  # gunicorn is untyped
    """gunicorn's own messages (a worker that died, say) through the handler
    :func:`ntq.logs.configure` set up, so they follow ``NTQ_LOG_FORMAT`` like ntq's."""

    def setup(self, cfg: Any) -> None:
        super().setup(cfg)
        for handler in list(self.error_log.handlers):
            if getattr(handler, "_gunicorn", False):
                self.error_log.removeHandler(handler)
        self.error_log.propagate = True


class WebServer(BaseApplication):  # type: ignore[misc]  # gunicorn is untyped
    """gunicorn, configured in code; the app is built in each worker after fork."""

    def __init__(self, settings: Settings, options: dict[str, Any]) -> None:
        self.settings = settings
        self.options = options
        super().__init__()

    def load_config(self) -> None:
        for key, value in self.options.items():
            self.cfg.set(key, value)

    def load(self) -> Any:
        # gunicorn's gevent worker has patched the process; make psycopg2 cooperative too.
        from psycogreen.gevent import patch_psycopg

        patch_psycopg()
        from ntq.web.app import make_app

        return make_app(self.settings, pool_size=20)


def connection_capacity(wanted: int = WORKER_CONNECTIONS) -> int:
    """How many connections each worker can hold, up to ``wanted``, after raising this
    process's soft limit on open files to the hard one if it is lower than they need
    (the workers inherit it). A hard limit too low for ``wanted`` is logged."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    needed = wanted + RESERVED_FDS
    if soft != resource.RLIM_INFINITY and soft < needed:
        soft = hard if hard != resource.RLIM_INFINITY else needed
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    if soft == resource.RLIM_INFINITY or soft >= needed:
        return wanted
    capacity = max(soft - RESERVED_FDS, 1)
    log.warning("web.open_files_limit", limit=soft, connections=capacity, wanted=wanted)
    return capacity


def _listening(arbiter: Any) -> None:
    """Say where the web listens, once its sockets are ready."""
    for listener in arbiter.LISTENERS:
        log.info("web.listening", url=str(listener), workers=arbiter.num_workers)


def options(settings: Settings, host: str, workers: int) -> dict[str, Any]:
    return {
        "bind": f"{host}:{settings.port}",
        "workers": workers,
        "worker_class": "gevent",
        "worker_connections": connection_capacity(),
        "keepalive": 5,
        "graceful_timeout": 10,
        # nTorque's clients send NTORQUE_API_KEY with an underscore: keep such headers.
        "header_map": "dangerous",
        "accesslog": None,
        "errorlog": "-",
        "logger_class": PropagatingLogger,
        "loglevel": "warning",
        # The longest request line gunicorn allows, so that POST /'s query string holds a
        # url and a callback of the longest length accepted (2,048 characters each).
        "limit_request_line": 8190,
        "limit_request_fields": 100,
        "limit_request_field_size": 8190,
        "proc_name": "ntq-web",
        "when_ready": _listening,
    }


def serve_web(settings: Settings, listener: socket.socket, workers: int) -> None:
    """Run the web on ``listener`` (bound by the caller, so a taken port fails before
    anything starts, and a supervisor may keep it across restarts)."""
    # gunicorn takes the bound socket over instead of binding host:port itself.
    config = {**options(settings, "", workers), "bind": f"fd://{listener.detach()}"}
    WebServer(settings, config).run()
