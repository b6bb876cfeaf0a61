"""The document's components: data shapes, shared parameters, responses, security schemes.

Enumerations and limits come from the code that enforces them (the request schemas, the
records and models, the settings), so the document describes the values the API accepts.
"""

from __future__ import annotations

from typing import Any

from ntq.config import Settings
from ntq.records import Outcome, Status
from ntq.store.models import BACKOFFS, METHODS, NOTICE_POLICIES
from ntq.urlsafety import MAX_URL_LENGTH
from ntq.web.api import auth, schemas
from ntq.web.api.errors import DB_RETRY_AFTER

Schema = dict[str, Any]

STATUSES = [status.value for status in Status]
STRING: Schema = {"type": "string"}
INTEGER: Schema = {"type": "integer"}
TIME: Schema = {"type": "string", "format": "date-time", "description": "UTC, ISO 8601 with `Z`"}
URL: Schema = {"type": "string", "format": "uri"}
HEADERS: Schema = {"type": "object", "additionalProperties": STRING}
# What ``not_before`` and the listing's time filters accept.
ANY_TIME: Schema = {
    "anyOf": [{"type": "string", "format": "date-time"}, {"type": "number", "minimum": 0}],
    "description": "ISO 8601 (without an offset: UTC) or epoch seconds",
}


def ref(name: str, kind: str = "schemas") -> Schema:
    return {"$ref": f"#/components/{kind}/{name}"}


def maybe(schema: Schema) -> Schema:
    """``schema`` or null."""
    return {"anyOf": [schema, {"type": "null"}]}


def closed(
    properties: dict[str, Schema],
    *,
    required: list[str] | None = None,
    description: str | None = None,
) -> Schema:
    """An object with exactly these properties (all required unless ``required`` says)."""
    schema: Schema = {
        "type": "object",
        "properties": properties,
        "required": list(properties) if required is None else required,
        "additionalProperties": False,
    }
    if description:
        schema["description"] = description
    return schema


def task_fields(settings: Settings) -> dict[str, Schema]:
    """The fields a task is created with, as ``POST /tasks`` takes them (``POST /`` takes the
    same in its query string, except the body and headers)."""
    return {
        "url": {
            **URL,
            "maxLength": MAX_URL_LENGTH,
            "description": "the webhook: an absolute http or https URL",
        },
        "method": {"enum": list(METHODS), "default": "POST"},
        "headers": {
            **HEADERS,
            "maxProperties": schemas.MAX_HEADERS,
            "description": "headers sent to the webhook",
        },
        "body": {**STRING, "description": "the body as text (UTF-8)"},
        "json": {"description": "the body as any JSON value (content type application/json)"},
        "body_base64": {
            **STRING,
            "contentEncoding": "base64",
            "description": "the body's bytes in base64",
        },
        "content_type": {**STRING, "minLength": 1, "maxLength": 255},
        "timeout": {
            **INTEGER,
            "minimum": 1,
            "maximum": settings.max_timeout,
            "default": settings.default_timeout,
            "description": "seconds for one attempt",
        },
        "delay": {
            "type": "number",
            "minimum": 0,
            "maximum": schemas.MAX_DELAY,
            "description": "seconds before the first attempt (or give not_before)",
        },
        "not_before": {
            **ANY_TIME,
            "description": "no attempt before this time (within a year; ISO 8601 or epoch seconds)",
        },
        "max_retries": {**INTEGER, "minimum": 0, "maximum": 1000, "default": settings.max_retries},
        "backoff": {"enum": list(BACKOFFS), "default": settings.backoff},
        "callback": {
            **URL,
            "maxLength": MAX_URL_LENGTH,
            "description": "POSTed the task and its response once it is finished",
        },
        "idempotency_key": {
            **STRING,
            "minLength": 1,
            "maxLength": schemas.MAX_IDEMPOTENCY_KEY,
            "description": "a second enqueue with the same key returns the first task (200)",
        },
        "cancel_notice": {
            "enum": list(NOTICE_POLICIES),
            "default": "started",
            "description": "when a cancel sends the webhook a DELETE",
        },
    }


def task_request(settings: Settings) -> Schema:
    return closed(
        task_fields(settings),
        required=["url"],
        description="A task to create; give at most one of body, json and "
        "body_base64, and delay or not_before, not both.",
    )


TASK = closed(
    {
        "id": {**STRING, "format": "uuid"},
        "status": {"enum": STATUSES},
        "url": STRING,
        "method": {"enum": list(METHODS)},
        "headers": HEADERS,
        "content_type": maybe(STRING),
        "timeout": INTEGER,
        "due": {**TIME, "description": "when the task may next be attempted"},
        "retry_count": {**INTEGER, "description": "attempts started so far"},
        "attempts": {**INTEGER, "description": "an alias of retry_count"},
        "max_retries": INTEGER,
        "backoff": {"enum": list(BACKOFFS)},
        "created": TIME,
        "modified": TIME,
        "last_status_code": maybe(INTEGER),
        "last_error": maybe(STRING),
        "callback": maybe(STRING),
        "idempotency_key": maybe(STRING),
        "callback_of": maybe({**STRING, "format": "uuid"}),
        "cancel_notice": {"enum": list(NOTICE_POLICIES)},
        "body_size": {**INTEGER, "description": "bytes in the stored body"},
        "app": maybe({**STRING, "description": "the owning application's name"}),
        "links": closed({"self": URL, "response": URL, "attempts": URL}),
    },
    description="A task. The body is not included (see body_size).",
)

ATTEMPT_FIELDS: dict[str, Schema] = {
    "attempt": {**INTEGER, "description": "1-based"},
    "method": {"enum": list(METHODS)},
    "started": TIME,
    "elapsed_ms": INTEGER,
    "status_code": maybe(INTEGER),
    "reason": maybe(STRING),
    "headers": maybe(HEADERS),
    "truncated": {"type": "boolean"},
    "error": maybe(STRING),
    "outcome": {"enum": [outcome.value for outcome in Outcome]},
}

RESPONSE = closed(
    {
        **ATTEMPT_FIELDS,
        "body": {
            **maybe(STRING),
            "description": "the stored body when it is UTF-8 (null once forgotten)",
        },
        "body_base64": {**STRING, "description": "the stored body, when it is not UTF-8"},
        "task_status": {"enum": STATUSES},
    },
    required=[*ATTEMPT_FIELDS, "task_status"],
    description="The latest attempt's response; body or body_base64, never both.",
)

ERROR = closed(
    {
        "error": closed(
            {
                "code": {
                    **STRING,
                    "description": "machine-readable, e.g. invalid_url or not_found",
                },
                "message": STRING,
                "index": {**INTEGER, "description": "the bad task of a batch"},
                "task_status": {
                    "enum": STATUSES,
                    "description": "with no_response: the task's status",
                },
            },
            required=["code", "message"],
        )
    }
)

COUNTS = closed(dict.fromkeys(STATUSES, INTEGER))

STATS = closed(
    {
        "counts": COUNTS,
        "due_now": INTEGER,
        "oldest_pending_age_seconds": {"type": "number"},
        "completed_last_minute": INTEGER,
        "failed_last_minute": INTEGER,
        "completed_last_hour": INTEGER,
        "failed_last_hour": INTEGER,
        "delivery_latency_seconds": closed(
            {"mean": maybe({"type": "number"}), "p99": maybe({"type": "number"})}
        ),
    }
)

SHAPES: dict[str, Schema] = {
    "Task": TASK,
    "TaskList": closed(
        {
            "tasks": {"type": "array", "items": ref("Task")},
            "next": {**maybe(URL), "description": "the next page, if any"},
        }
    ),
    "TaskBatch": closed({"tasks": {"type": "array", "items": ref("Task")}}),
    "Attempt": closed(ATTEMPT_FIELDS),
    "AttemptList": closed({"attempts": {"type": "array", "items": ref("Attempt")}}),
    "Response": RESPONSE,
    "Error": ERROR,
    "Stats": STATS,
    "Descriptor": closed(
        {
            "name": STRING,
            "version": STRING,
            "links": closed(
                {"tasks": URL, "stats": URL, "health": URL, "ready": URL, "metrics": URL}
            ),
        }
    ),
    "Health": closed({"status": {"const": "ok"}}),
    "Ready": closed(
        {
            "ready": {"type": "boolean"},
            "checks": closed(
                {
                    "postgresql": {**STRING, "description": "ok, read-only or unreachable: <why>"},
                    "redis": {**STRING, "description": "ok or unreachable: <why>"},
                }
            ),
        }
    ),
}


def shapes(settings: Settings) -> dict[str, Schema]:
    return {**SHAPES, "TaskRequest": task_request(settings)}


def header(description: str, schema: Schema = STRING, required: bool = True) -> Schema:
    return {"description": description, "required": required, "schema": schema}


LOCATION = header("the task's absolute URL", URL)
LINK = header("RFC 8288 links to the task, its response and its attempts")


def error(description: str, **headers: Schema) -> Schema:
    response: Schema = {
        "description": description,
        "content": {"application/json": {"schema": ref("Error")}},
    }
    if headers:
        response["headers"] = headers
    return response


RESPONSES: dict[str, Schema] = {
    "BadRequest": error("Bad input, named in the message (or not UTF-8)."),
    "Unauthorized": error("A missing, malformed or unknown API key."),
    "NotFound": error("No such task for this application (another's is also 404)."),
    "Conflict": error("The task is not in a state that allows this."),
    "TooLarge": error("The body or the batch is too large."),
    "BodyTimeout": error("The request body did not arrive in time."),
    "UriTooLong": error(
        "The request line (the path and query string) is longer than "
        "8,190 bytes; send long URLs to POST /tasks instead."
    ),
    "HeadersTooLarge": error("Too many headers, or one longer than 8,190 bytes."),
    "Unavailable": error(
        "PostgreSQL is unreachable, read-only or busy; retry later.",
        **{
            "Retry-After": header(
                f"seconds to wait (here {DB_RETRY_AFTER})", {**INTEGER, "minimum": 0}
            )
        },
    ),
}


def security_schemes() -> dict[str, Schema]:
    """Every header an API key is accepted in: the Bearer token, ntq's own header and
    nTorque's (also with an underscore, as nTorque's client sends it)."""
    keys = [*auth.KEY_HEADERS, auth.KEY_HEADERS[-1].replace("-", "_")]
    described: dict[str, Schema] = {
        "bearer": {"type": "http", "scheme": "bearer", "description": "Authorization: Bearer <key>"}
    }
    for name in keys:
        described[name] = {"type": "apiKey", "in": "header", "name": name}
    return described
