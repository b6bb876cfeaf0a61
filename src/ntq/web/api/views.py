"""Thin views: parse, call the store, render. The transaction belongs to pyramid_tm;
the notifier is told only after it commits."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import gevent
import structlog
from gunicorn.http.errors import ParseException
from pyramid.request import Request
from pyramid.response import Response
from pyramid.view import view_config

from ntq import __version__
from ntq.records import NewTask, TaskView
from ntq.store import db, enqueue
from ntq.web.api import auth, schemas
from ntq.web.api.errors import ApiError
from ntq.web.api.render import json_response, task_json, task_response
from ntq.web.api.shared import after_commit, owned_task
from ntq.web.services import services

T = TypeVar("T")

log = structlog.get_logger(__name__)


def enqueued_hints(
    created: list[tuple[TaskView, NewTask]],
) -> tuple[list[uuid.UUID], dict[uuid.UUID, float]]:
    """New tasks to wake workers for now, and delayed ones to schedule (id -> epoch)."""
    now = [task.id for task, new in created if not (new.delay or new.not_before)]
    later = {task.id: task.due.timestamp() for task, new in created if new.delay or new.not_before}
    return now, later


def notify_enqueued(request: Request, created: list[tuple[TaskView, NewTask]]) -> None:
    """Wake workers for tasks already committed (no transaction to wait for)."""
    services(request).enqueue_hints.add(*enqueued_hints(created))


def read_body(request: Request, limit: int | None = None) -> bytes:
    """The request body, refused with 413 beyond ``limit`` (default
    ``NTQ_MAX_BODY_BYTES``) and with 408 unless all of it arrives within
    ``NTQ_BODY_TIMEOUT`` seconds."""
    settings = services(request).settings
    limit = limit or settings.max_body_bytes
    too_large = ApiError(413, "body_too_large", f"body must be at most {limit} bytes")
    if request.content_length is not None and request.content_length > limit:
        raise too_large
    data = _read_within(request, limit + 1, settings.body_timeout)
    if len(data) > limit:
        raise too_large
    return data


def _read_within(request: Request, size: int, seconds: float) -> bytes:
    """Up to ``size`` bytes of the body, all of which must arrive within ``seconds``.

    The deadline covers the whole body, not each read: a client trickling a byte a
    second would pass any per-read timeout and hold its connection for ever.
    """
    late = ApiError(
        408, "body_timeout", f"the request body did not arrive within {seconds:g} seconds"
    )
    try:
        with gevent.Timeout(seconds, late):
            data: bytes = request.body_file.read(size)
    except ApiError:
        log.info("web.body_timeout", path=request.path, seconds=seconds)
        raise
    except ParseException as exc:
        # Broken chunked framing (a size that is not hex, a missing CRLF...): the client's
        # fault, and the connection cannot be reused.
        log.info("web.invalid_framing", path=request.path, error=type(exc).__name__)
        raise ApiError(
            400, "invalid_framing", f"the request body's chunked framing is invalid: {exc}"
        ) from None
    except OSError as exc:
        # The client went away mid-body (webob's DisconnectionError, a reset...): nobody
        # reads the answer, so one line says what happened, without a traceback.
        log.info("web.client_disconnected", path=request.path, error=type(exc).__name__)
        raise ApiError(
            400, "incomplete_body", "the connection closed before the whole body arrived"
        ) from None
    return data


@dataclass(frozen=True)
class Submitted:
    """What an enqueue stored: each task and whether it is new (not an idempotent
    repeat), and the application the key belongs to."""

    results: list[tuple[TaskView, bool]]
    caller: auth.Caller


def created_response(
    request: Request, task: TaskView, created: bool, caller: auth.Caller
) -> Response:
    location = request.route_url("task", id=str(task.id))
    return task_response(request, task, 201 if created else 200, caller, Location=location)


# Bodies larger than this are read only once the key is known to be valid: an unknown
# caller must not make the web read, parse and store megabytes before its 401.
EARLY_AUTH_BYTES = 64 * 1024


def validated(request: Request, parse: Callable[[], T]) -> T:
    """``parse()``; but when it finds the request bad, a bad key is still a 401 first."""
    if (request.content_length or 0) > EARLY_AUTH_BYTES or request.headers.get("Transfer-Encoding"):
        request.caller  # noqa: B018  (raises 401 without a valid key)
    try:
        return parse()
    except (ApiError, UnicodeDecodeError):
        request.caller  # noqa: B018
        raise


def submit(request: Request, key: str | None, batch: list[NewTask]) -> Submitted:
    """Store ``batch`` for the key's application (401 if the key is not valid), then
    wake the workers: :mod:`ntq.store.enqueue`, one autocommit statement, outside the request's
    transaction (so retried by itself on a fresh connection if its own was lost)."""
    done = enqueue.submit(services(request).store, batch, key)
    if done is None:
        raise auth.invalid_key()
    notify_enqueued(
        request,
        [(task, new) for (task, created), new in zip(done.results, batch, strict=True) if created],
    )
    # The application is known from the statement: no ``caller`` lookup to render.
    return Submitted(done.results, auth.Caller(done.app_id, done.app_name))


@view_config(route_name="root", request_method="POST")
def enqueue_query(request: Request) -> Response:
    """nTorque-compatible enqueue: parameters in the query string, the body verbatim."""
    key = auth.checked_key(request)
    new = validated(
        request,
        lambda: schemas.from_query(
            request.GET,
            request.headers,
            read_body(request),
            request.headers.get("Content-Type"),
            services(request).settings,
        ),
    )
    submitted = submit(request, key, [new])
    [(task, created)] = submitted.results
    return created_response(request, task, created, submitted.caller)


@view_config(route_name="tasks", request_method="POST")
def enqueue_json(request: Request) -> Response:
    """Structured enqueue: one JSON task, or an array of up to 1,000 in one statement
    (all or nothing; a bad item is named by its index)."""
    key = auth.checked_key(request)
    document = validated(
        request,
        lambda: schemas.json_document(
            request.headers.get("Content-Type"), read_body(request, schemas.MAX_BATCH_BYTES)
        ),
    )
    single = isinstance(document, dict)
    batch = validated(
        request,
        lambda: schemas.from_json_batch(
            [document] if single else document, services(request).settings
        ),
    )
    submitted = submit(request, key, batch)
    if single:
        return created_response(request, *submitted.results[0], submitted.caller)
    any_new = any(created for _, created in submitted.results)
    tasks = [task_json(request, task, submitted.caller) for task, _ in submitted.results]
    return json_response({"tasks": tasks}, 201 if any_new else 200)


@view_config(route_name="root", request_method="GET")
def describe(request: Request) -> Response:
    """The service descriptor: authenticated like every route but health and metrics,
    except under ``NTQ_NTORQUE_COMPAT``, where it answers anyone as nTorque's did."""
    if not services(request).settings.ntorque_compat:
        request.caller  # noqa: B018  (raises 401 without a valid key)
    return json_response(
        {
            "name": "ntq",
            "version": __version__,
            "links": {
                "tasks": request.route_url("tasks"),
                "stats": request.route_url("stats"),
                "health": request.route_url("healthz"),
                "ready": request.route_url("readyz"),
                "metrics": request.route_url("metrics"),
            },
        }
    )


@view_config(route_name="task", request_method="GET")
def show_task(request: Request) -> Response:
    return task_response(request, owned_task(request))


@view_config(route_name="task_push", request_method="POST")
def push_task(request: Request) -> Response:
    """nTorque's manual push: wake the workers for this task again."""
    task = owned_task(request)
    notifier = services(request).notifier
    after_commit(request, lambda: notifier.push([task.id]))
    return task_response(request, task, 201, Location=request.route_url("task", id=str(task.id)))


@view_config(route_name="healthz", request_method="GET")
def healthz(request: Request) -> Response:
    return json_response({"status": "ok"})


@view_config(route_name="readyz", request_method="GET")
def readyz(request: Request) -> Response:
    """PostgreSQL reachable and writable, and Redis reachable: 200; otherwise 503 naming
    what is down (or read-only)."""
    checks = {"postgresql": _check_db(request), **services(request).notifier.readiness()}
    ready = all(value == "ok" for value in checks.values())
    return json_response({"ready": ready, "checks": checks}, 200 if ready else 503)


def _check_db(request: Request) -> str:
    """Both pools reach a writable database: the request transactions' and the enqueue
    statements'. A pooled connection that was lost, or opened while the database was
    read-only, is replaced first: the answer is about PostgreSQL as it is now."""
    return db.health(services(request).store)
