"""The OpenAPI 3.1 document of ntq's HTTP API: every route, parameter, body, response and
header. The tests hold it to the code: every route Pyramid knows, every request field the
schemas accept, and every response the API gives, conforms to it."""

from __future__ import annotations

from typing import Any

from ntq import __version__
from ntq.config import Settings
from ntq.web.api import manage, schemas
from ntq.web.openapi.components import (
    ANY_TIME,
    INTEGER,
    LINK,
    LOCATION,
    STATUSES,
    STRING,
    Schema,
    header,
    ref,
    security_schemes,
    shapes,
    task_fields,
)
from ntq.web.openapi.components import RESPONSES as SHARED

OPENAPI_VERSION = "3.1.0"
PUBLIC: list[dict[str, list[str]]] = []  # an operation anyone may call


def json_body(schema: Schema, description: str, **headers: Schema) -> Schema:
    response: Schema = {
        "description": description,
        "content": {"application/json": {"schema": schema}},
    }
    if headers:
        response["headers"] = headers
    return response


# The status of each error response in the components.
STATUS_OF = {
    "BadRequest": "400",
    "Unauthorized": "401",
    "NotFound": "404",
    "BodyTimeout": "408",
    "Conflict": "409",
    "TooLarge": "413",
    "UriTooLong": "414",
    "HeadersTooLarge": "431",
    "Unavailable": "503",
}


def shared(*names: str) -> dict[str, Schema]:
    """Error responses from the components, by status."""
    return {STATUS_OF[name]: ref(name, "responses") for name in names}


def query(name: str, schema: Schema, description: str = "", required: bool = False) -> Schema:
    return {
        "name": name,
        "in": "query",
        "required": required,
        "schema": schema,
        "description": description or schema.get("description", ""),
    }


TASK_ID = {
    "name": "id",
    "in": "path",
    "required": True,
    "schema": {**STRING, "format": "uuid"},
    "description": "the task's id",
}
TASK = ref("Task")
NO_CONTENT = {"204": {"description": "Done."}}
READ = ("Unauthorized", "NotFound", "Unavailable")
# What a client can do next with the task an operation answered (OpenAPI links).
TASK_LINKS = {
    operation: {"operationId": operation, "parameters": {"id": "$response.body#/id"}}
    for operation in (
        "getTask",
        "cancelTask",
        "getResponse",
        "forgetResponses",
        "listAttempts",
        "retryTask",
        "pushTask",
    )
}


def task_answer(description: str, **headers: Schema) -> Schema:
    """A response whose body is one task, with links to the task's operations."""
    return {**json_body(TASK, description, Link=LINK, **headers), "links": TASK_LINKS}


def enqueue_query(settings: Settings) -> Schema:
    """``POST /``: nTorque's enqueue, parameters in the query string, the body verbatim."""
    fields = task_fields(settings)
    return {
        "operationId": "enqueue",
        "tags": ["enqueue"],
        "summary": "Enqueue a task (nTorque-compatible)",
        "description": (
            "The request's body and Content-Type are stored and sent verbatim. Headers "
            "prefixed `NTQ-PASSTHROUGH-` (or `NTORQUE-PASSTHROUGH-`) are sent to the "
            "webhook with the prefix removed. Unknown or repeated query parameters are "
            "refused."
        ),
        "parameters": [
            *(
                query(name, fields[name], required=name == "url")
                for name in sorted(schemas.QUERY_PARAMETERS)
            ),
            {
                "name": "Idempotency-Key",
                "in": "header",
                "required": False,
                "schema": fields["idempotency_key"],
                "description": "a second enqueue with this key returns the first task (200)",
            },
        ],
        "requestBody": {
            "required": False,
            "description": "any bytes, any content type",
            "content": {
                "application/octet-stream": {},
                "text/plain": {"schema": STRING},
                "application/json": {},
            },
        },
        "responses": {
            "201": task_answer("Created.", Location=LOCATION),
            "200": task_answer(
                "The task enqueued before with this Idempotency-Key.", Location=LOCATION
            ),
            **shared(
                "BadRequest",
                "Unauthorized",
                "BodyTimeout",
                "TooLarge",
                "HeadersTooLarge",
                "Unavailable",
            ),
        },
    }


def enqueue_json() -> Schema:
    created = {"anyOf": [TASK, ref("TaskBatch")]}
    optional = {"Location": {**LOCATION, "required": False}, "Link": {**LINK, "required": False}}
    return {
        "operationId": "enqueueJson",
        "tags": ["enqueue"],
        "summary": "Enqueue one task, or up to 1,000 at once",
        "description": "An array is stored in one transaction: all or nothing; a bad item "
        "is named by its index. One task is answered as a task (with "
        'Location and Link), an array as `{"tasks": [...]}`.',
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {
                    "schema": {
                        "anyOf": [
                            ref("TaskRequest"),
                            {
                                "type": "array",
                                "items": ref("TaskRequest"),
                                "minItems": 1,
                                "maxItems": schemas.MAX_BATCH,
                            },
                        ],
                    }
                }
            },
        },
        "responses": {
            "201": json_body(created, "Created (at least one task is new).", **optional),
            "200": json_body(created, "Every task existed already (idempotency keys).", **optional),
            **shared("BadRequest", "Unauthorized", "BodyTimeout", "TooLarge"),
            "415": SHARED["BadRequest"] | {"description": "The body is not application/json."},
            **shared("Unavailable"),
        },
    }


def list_tasks() -> Schema:
    return {
        "operationId": "listTasks",
        "tags": ["tasks"],
        "summary": "The application's tasks, newest first",
        "parameters": [
            query("status", {"enum": STATUSES}),
            query("created_after", ANY_TIME),
            query("created_before", ANY_TIME),
            query(
                "before",
                {**STRING, "format": "uuid"},
                "the cursor: tasks older than this one (from the `next` link)",
            ),
            query("limit", {**INTEGER, "minimum": 1, "maximum": schemas.MAX_LIST, "default": 100}),
        ],
        "responses": {
            "200": json_body(
                ref("TaskList"),
                "A page of tasks.",
                Link=header('rel="next": the next page, when there may be one', required=False),
            ),
            **shared("BadRequest", "Unauthorized", "Unavailable"),
        },
    }


def task_operations() -> dict[str, Schema]:
    """``/tasks/{id}``: read and cancel."""
    return {
        "get": {
            "operationId": "getTask",
            "tags": ["tasks"],
            "summary": "A task",
            "responses": {"200": task_answer("The task."), **shared(*READ)},
        },
        "delete": {
            "operationId": "cancelTask",
            "tags": ["tasks"],
            "summary": "Cancel a task",
            "description": "A PENDING task becomes CANCELLED at once; a running attempt is "
            "interrupted and the webhook is sent a DELETE as its "
            "cancel_notice says.",
            "responses": {
                **NO_CONTENT,
                **shared("Unauthorized", "NotFound", "Conflict", "Unavailable"),
            },
        },
    }


def response_operations() -> dict[str, Schema]:
    """``/tasks/{id}/response``: the latest attempt's response, and forgetting it."""
    return {
        "get": {
            "operationId": "getResponse",
            "tags": ["tasks"],
            "summary": "The latest attempt's response",
            "parameters": [
                query(
                    "wait",
                    {"type": "number", "minimum": 0, "maximum": manage.MAX_WAIT},
                    "seconds to wait for the task to finish first",
                )
            ],
            "responses": {
                "200": json_body(ref("Response"), "The response.", Link=LINK),
                **shared("BadRequest", "Unauthorized"),
                "404": SHARED["NotFound"]
                | {
                    "description": "No such task, or no response yet (code no_response, "
                    "with task_status)."
                },
                **shared("Unavailable"),
            },
        },
        "delete": {
            "operationId": "forgetResponses",
            "tags": ["tasks"],
            "summary": "Forget the stored responses",
            "responses": {**NO_CONTENT, **shared(*READ)},
        },
    }


def task_actions() -> dict[str, Schema]:
    """``/tasks/{id}/...``: attempts, replay and push."""
    return {
        "/tasks/{id}/attempts": {
            "parameters": [TASK_ID],
            "get": {
                "operationId": "listAttempts",
                "tags": ["tasks"],
                "summary": "Every attempt, oldest first",
                "responses": {
                    "200": json_body(ref("AttemptList"), "The attempts.", Link=LINK),
                    **shared(*READ),
                },
            },
        },
        "/tasks/{id}/retry": {
            "parameters": [TASK_ID],
            "post": {
                "operationId": "retryTask",
                "tags": ["tasks"],
                "summary": "Replay a FAILED or CANCELLED task",
                "description": "Back to PENDING, due now, with a fresh retry budget; the "
                "history is kept.",
                "responses": {
                    "200": task_answer("The task, PENDING again."),
                    **shared("Unauthorized", "NotFound", "Conflict", "Unavailable"),
                },
            },
        },
        "/tasks/{id}/push": {
            "parameters": [TASK_ID],
            "post": {
                "operationId": "pushTask",
                "tags": ["tasks"],
                "summary": "Wake the workers for a task again (nTorque's push)",
                "responses": {"201": task_answer("Pushed.", Location=LOCATION), **shared(*READ)},
            },
        },
    }


def root(settings: Settings) -> Schema:
    """``/``: the descriptor, nTorque's enqueue, and deleting everything."""
    return {
        "get": {
            "operationId": "describe",
            "tags": ["service"],
            "summary": "The service descriptor",
            "description": "Open to anyone under NTQ_NTORQUE_COMPAT.",
            "responses": {
                "200": json_body(ref("Descriptor"), "Name, version and links."),
                **shared("Unauthorized", "Unavailable"),
            },
        },
        "post": enqueue_query(settings),
        "delete": {
            "operationId": "deleteAll",
            "tags": ["tasks"],
            "summary": "Delete every task of the application",
            "description": "Running attempts are interrupted; DELETE notices owed are sent.",
            "responses": {**NO_CONTENT, **shared("Unauthorized", "Unavailable")},
        },
    }


def operations() -> dict[str, Schema]:
    """The routes that are not about one task: numbers, health and this document."""

    def public(
        operation_id: str, summary: str, responses: dict[str, Schema], tag: str = "service"
    ) -> Schema:
        return {
            "get": {
                "operationId": operation_id,
                "tags": [tag],
                "summary": summary,
                "security": PUBLIC,
                "responses": responses,
            }
        }

    return {
        "/stats": {
            "get": {
                "operationId": "stats",
                "tags": ["service"],
                "summary": "Counts, backlog, recent outcomes and delivery latency",
                "responses": {
                    "200": json_body(ref("Stats"), "The application's numbers."),
                    **shared("Unauthorized", "Unavailable"),
                },
            }
        },
        "/healthz": public(
            "health", "The process is alive", {"200": json_body(ref("Health"), "Alive.")}
        ),
        "/readyz": public(
            "ready",
            "PostgreSQL and Redis are reachable",
            {
                "200": json_body(ref("Ready"), "Ready."),
                "503": json_body(ref("Ready"), "Not ready; checks says what is down."),
            },
        ),
        "/metrics": public(
            "metrics",
            "Prometheus metrics",
            {
                "200": {
                    "description": "The Prometheus text format.",
                    "content": {"text/plain": {"schema": STRING}},
                }
            },
        ),
        "/openapi.json": public(
            "openapi",
            "This document",
            {"200": json_body({"type": "object"}, "The OpenAPI document.")},
            "reference",
        ),
        "/docs": public(
            "reference",
            "This document as a web page",
            {"200": {"description": "HTML.", "content": {"text/html": {"schema": STRING}}}},
            "reference",
        ),
    }


def with_long_lines(paths: dict[str, Schema]) -> dict[str, Schema]:
    """Every operation with a parameter in its path or query may meet the web server's
    limit on the request line (414), answered before ntq sees the request."""
    for item in paths.values():
        for method, operation in item.items():
            if method != "parameters" and (item.get("parameters") or operation.get("parameters")):
                operation["responses"].update(shared("UriTooLong"))
    return paths


def paths(settings: Settings) -> dict[str, Schema]:
    return with_long_lines(
        {
            "/": root(settings),
            "/tasks": {"get": list_tasks(), "post": enqueue_json()},
            "/tasks/{id}": {"parameters": [TASK_ID], **task_operations()},
            "/tasks/{id}/response": {"parameters": [TASK_ID], **response_operations()},
            **task_actions(),
            **operations(),
        }
    )


def build(settings: Settings) -> dict[str, Any]:
    """The document for an API running with ``settings`` (its limits and defaults)."""
    schemes = security_schemes()
    return {
        "openapi": OPENAPI_VERSION,
        "info": {
            "title": "ntq",
            "version": __version__,
            "license": {"name": "MIT", "identifier": "MIT"},
            "description": "A durable webhook task queue. Every route but health, "
            "readiness, metrics and this reference takes an API key.",
        },
        "tags": [{"name": name} for name in ("enqueue", "tasks", "service", "reference")],
        "paths": paths(settings),
        "components": {
            "schemas": shapes(settings),
            "responses": SHARED,
            "securitySchemes": schemes,
        },
        "security": [{name: []} for name in schemes],
    }
