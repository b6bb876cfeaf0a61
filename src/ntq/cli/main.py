"""The ``ntq`` command. Heavy imports are deferred to the command that needs them, and the
gevent-based commands patch the process before anything else is imported."""

from __future__ import annotations

import argparse
import socket
import sys
from collections.abc import Callable, Sequence
from typing import Any

from ntq import __version__
from ntq.config import ConfigError, Settings, load_settings, option_default, parser
from ntq.embedded.lifetime import StartError

Handler = Callable[[argparse.Namespace], int]


def _checked(variable: str) -> Callable[[str], Any]:
    """An option's type: parsed and range-checked like the variable it stands for."""
    parse = parser(variable)

    def check(raw: str) -> Any:
        try:
            return parse(raw)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    return check


def _settings(**overrides: Any) -> Settings:
    return _resolved(load_settings(**overrides))


def _resolved(settings: Settings) -> Settings:
    """``settings`` with the embedded servers started where no URL is given; logs set up."""
    from ntq import logs
    from ntq.embedded.servers import resolve

    settings = resolve(settings)
    logs.configure(settings.log_format)
    return settings


def _database_settings() -> Settings:
    """Settings for a command that needs PostgreSQL only (the embedded one if no URL)."""
    from ntq import logs
    from ntq.embedded.servers import resolve_database

    settings = resolve_database(load_settings())
    logs.configure(settings.log_format)
    return settings


def _listener(args: argparse.Namespace, settings: Settings) -> socket.socket:
    """The web's socket: inherited (``--fd``), or bound now, before anything is started."""
    from ntq.web.server import listen

    if args.fd is not None:
        return socket.socket(fileno=args.fd)
    return listen(args.host, settings.port)


def cmd_web(args: argparse.Namespace) -> int:
    from ntq.green import patch

    patch()  # before redis, requests or ssl are imported; gunicorn's own patch is then a no-op
    from ntq.web.server import serve_web

    settings = load_settings(port=args.port, web_concurrency=args.workers)
    listener = _listener(args, settings)
    serve_web(_resolved(settings), listener, settings.web_concurrency)
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    from ntq.green import patch

    patch()
    from ntq.cli.processes import run_worker

    settings = _settings(worker_concurrency=args.concurrency, worker_grace=args.grace)
    run_worker(settings, settings.worker_grace)
    return 0


def cmd_requeue(args: argparse.Namespace) -> int:
    from ntq.cli.processes import run_requeue

    run_requeue(_settings())
    return 0


def cmd_migrate(args: argparse.Namespace) -> int:
    from ntq.store.migrate import upgrade

    settings = _database_settings()
    assert settings.database_url
    upgrade(settings.database_url)
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from ntq.cli.serve import serve
    from ntq.web.server import listen

    settings = load_settings(port=args.port)
    listener = listen(args.host, settings.port)
    return serve(_resolved(settings), args.host, listener)


def cmd_apps(args: argparse.Namespace) -> int:
    from ntq.cli.apps import run

    return run(_database_settings(), args)


def cmd_bench(args: argparse.Namespace) -> int:
    from ntq.bench.command import run

    return run(args)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ntq",
        description="ntq: a durable webhook task queue.",
        epilog="Settings come from the environment (DATABASE_URL, REDIS_URL, PORT, NTQ_*); "
        "see README.md. Without DATABASE_URL / REDIS_URL, embedded servers are used.",
    )
    parser.add_argument("--version", action="version", version=f"ntq {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="the whole service: migrate, web, worker, requeue")
    _web_options(serve)
    serve.set_defaults(handler=cmd_serve)

    web = sub.add_parser("web", help="the HTTP API (gunicorn, gevent workers)")
    _web_options(web)
    web.add_argument(
        "--workers",
        type=_checked("WEB_CONCURRENCY"),
        default=None,
        help="web processes (env WEB_CONCURRENCY, default 2)",
    )
    web.add_argument(
        "--fd",
        type=int,
        default=None,
        help="serve on this inherited, already listening socket instead of "
        "binding --host/--port (ntq serve passes its own)",
    )
    web.set_defaults(handler=cmd_web)

    worker = sub.add_parser("worker", help="deliver tasks")
    worker.add_argument(
        "--concurrency",
        type=_checked("NTQ_WORKER_CONCURRENCY"),
        default=None,
        help="attempts in flight (env NTQ_WORKER_CONCURRENCY, default 100)",
    )
    worker.add_argument(
        "--grace",
        type=_checked("NTQ_WORKER_GRACE"),
        default=None,
        help="seconds to let attempts finish on SIGTERM (env NTQ_WORKER_GRACE, default 30)",
    )
    worker.set_defaults(handler=cmd_worker)

    sub.add_parser("requeue", help="requeue overdue tasks and clean up finished ones").set_defaults(
        handler=cmd_requeue
    )
    sub.add_parser("migrate", help="alembic upgrade head").set_defaults(handler=cmd_migrate)
    _apps_parser(sub)
    _bench_parser(sub)
    return parser


def _bench_parser(sub: Any) -> None:
    from ntq.bench.command import add_options

    bench = sub.add_parser("bench", help="measure throughput, latency and memory of the stack")
    add_options(bench)
    bench.set_defaults(handler=cmd_bench)


def _web_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--host",
        default=option_default("NTQ_HOST", "127.0.0.1"),
        help="address to listen on (env NTQ_HOST, default 127.0.0.1)",
    )
    parser.add_argument(
        "--port",
        type=_checked("PORT"),
        default=None,
        help="port to listen on (env PORT, default 8080)",
    )


def _apps_parser(sub: Any) -> None:
    apps = sub.add_parser("apps", help="manage applications and API keys")
    apps.set_defaults(handler=cmd_apps)
    actions = apps.add_subparsers(dest="action", required=True)
    create = actions.add_parser("create", help="create an application; prints its API key")
    create.add_argument("name")
    create.add_argument("--json", action="store_true", help="print one JSON object")
    listing = actions.add_parser("list", help="list applications")
    listing.add_argument("--json", action="store_true", help="print JSON")
    keys = actions.add_parser("keys", help="list an application's API keys (by prefix)")
    keys.add_argument("name")
    keys.add_argument("--json", action="store_true", help="print JSON")
    revoke = actions.add_parser("revoke", help="revoke an application (or one --key)")
    revoke.add_argument("name", nargs="?")
    revoke.add_argument(
        "--key",
        help="revoke only this API key: the whole key, or its prefix as `ntq apps keys` shows it",
    )
    key = actions.add_parser("add-key", help="issue another API key for an application")
    key.add_argument("name")
    key.add_argument("--json", action="store_true", help="print one JSON object")


def main(argv: Sequence[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    handler: Handler = args.handler
    try:
        sys.exit(handler(args))
    except ConfigError as exc:
        print(f"ntq: configuration error: {exc}", file=sys.stderr)
        sys.exit(2)
    except StartError as exc:
        print(f"ntq: {exc}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception as exc:
        message = _known_failure(exc)
        if message is None:
            raise
        print(f"ntq: {message}", file=sys.stderr)
        sys.exit(1)


def _known_failure(exc: Exception) -> str | None:
    """One line for a failure the user can fix (a database that cannot be reached...), or
    None for a bug, whose traceback is worth seeing."""
    from ntq.store.db import Unreachable
    from ntq.store.migrate import MigrationsNotFound

    if isinstance(exc, Unreachable):
        reason = str(exc.orig or exc).strip().splitlines()[0]
        return f"cannot use PostgreSQL ({reason}); check DATABASE_URL"
    if isinstance(exc, MigrationsNotFound):
        return str(exc)
    return None
