"""Request parsing: query parameters or JSON in, validated :class:`NewTask` out.

Every rule lives here, so the nTorque-style ``POST /`` and the structured ``POST /tasks``
accept exactly the same values.
"""

from __future__ import annotations

import base64
import binascii
import math
import re
import uuid
from collections import Counter
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

from ntq.config import Settings
from ntq.records import NewTask
from ntq.store.models import BACKOFFS, METHODS, NOTICE_POLICIES, STATUSES
from ntq.store.reads import TaskFilter
from ntq.urlsafety import UnsafeURL, check_url
from ntq.web.api.errors import ApiError

MAX_DELAY = 366 * 86400
MAX_HEADERS = 50
MAX_HEADER_BYTES = 16384
MAX_IDEMPOTENCY_KEY = 255
TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
# RFC 9110's field-value: visible characters and obs-text (the rest of Latin-1, which is
# all http.client can send), with spaces and tabs only inside.
_VISIBLE = r"[\x21-\x7e\x80-\xff]"
FIELD_VALUE = re.compile(rf"(?:{_VISIBLE}(?:[\t\x20-\x7e\x80-\xff]*{_VISIBLE})?)?")
# Headers ntq sets itself or that would corrupt the request framing.
RESERVED_HEADERS = frozenset(
    {
        "host",
        "content-length",
        "transfer-encoding",
        "connection",
        "keep-alive",
        "upgrade",
        "te",
        "trailer",
        "proxy-connection",
        "content-type",
        "user-agent",
        "webhook-id",
        "webhook-timestamp",
        "webhook-signature",
    }
)
PASSTHROUGH_PREFIXES = ("ntq-passthrough-", "ntorque-passthrough-")
# What nTorque assumed of a body sent without a Content-Type (``NTQ_NTORQUE_COMPAT``).
NTORQUE_CONTENT_TYPE = "application/x-www-form-urlencoded; charset=utf-8"

JSON_FIELDS = frozenset(
    {
        "url",
        "method",
        "headers",
        "body",
        "json",
        "body_base64",
        "content_type",
        "timeout",
        "delay",
        "not_before",
        "max_retries",
        "backoff",
        "callback",
        "idempotency_key",
        "cancel_notice",
    }
)

# ``POST /``'s query parameters; any other is refused, like an unknown JSON field.
QUERY_PARAMETERS = frozenset(
    {
        "url",
        "method",
        "timeout",
        "delay",
        "not_before",
        "max_retries",
        "backoff",
        "callback",
        "cancel_notice",
    }
)


def bad(code: str, message: str) -> ApiError:
    return ApiError(400, code, message)


def _integer(name: str, value: Any, low: int, high: int) -> int:
    if isinstance(value, str):
        try:
            value = int(value.strip())
        except ValueError:
            raise bad(f"invalid_{name}", f"{name} must be an integer") from None
    if isinstance(value, bool) or not isinstance(value, int):
        raise bad(f"invalid_{name}", f"{name} must be an integer")
    if not low <= value <= high:
        raise bad(f"invalid_{name}", f"{name} must be between {low} and {high}")
    return value


def _number(name: str, value: Any, low: float, high: float) -> float:
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            raise bad(f"invalid_{name}", f"{name} must be a number") from None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise bad(f"invalid_{name}", f"{name} must be a number")
    if not low <= value <= high:
        raise bad(f"invalid_{name}", f"{name} must be between {low:g} and {high:g}")
    return float(value)


def _is_epoch(value: Any) -> bool:
    if isinstance(value, str):
        return re.fullmatch(r"\d+(\.\d+)?", value.strip()) is not None
    return isinstance(value, int | float) and not isinstance(value, bool)


EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)


def _timestamp(value: Any) -> datetime:
    """ISO 8601 (naive means UTC) or epoch seconds, no further than a year ahead."""
    try:
        if _is_epoch(value):
            when = datetime.fromtimestamp(float(value), UTC)
        elif isinstance(value, str):
            when = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        else:
            raise TypeError
        when = (when if when.tzinfo else when.replace(tzinfo=UTC)).astimezone(UTC)
    except (TypeError, ValueError, OverflowError, OSError):
        raise bad(
            "invalid_not_before", "not_before must be an ISO 8601 time or epoch seconds"
        ) from None
    if when < EARLIEST:
        raise bad("invalid_not_before", "not_before must be after 1970-01-01")
    if when > datetime.now(UTC) + timedelta(seconds=MAX_DELAY):
        raise bad("invalid_not_before", "not_before must be within a year")
    return when


def _url(name: str, value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise bad(f"invalid_{name}", f"{name} is required and must be a string")
    try:
        return check_url(value)
    except UnsafeURL as exc:
        raise bad(f"invalid_{name}", f"{name}: {exc}") from None


def _method(value: Any) -> str:
    method = value.upper() if isinstance(value, str) else None
    if method not in METHODS:
        raise bad("invalid_method", f"method must be one of {', '.join(METHODS)}")
    return method


def _choice(name: str, value: Any, options: tuple[str, ...]) -> str:
    if value not in options:
        raise bad(f"invalid_{name}", f"{name} must be one of {', '.join(options)}")
    return str(value)


def _text(name: str, value: Any, limit: int) -> str:
    if not isinstance(value, str) or not value or len(value) > limit:
        raise bad(f"invalid_{name}", f"{name} must be a string of 1 to {limit} characters")
    if not value.isprintable():
        raise bad(f"invalid_{name}", f"{name} must not contain control characters")
    return value


def header_value_problem(value: str) -> str | None:
    """Why ``value`` cannot be sent as an HTTP header value, or None if it can."""
    if FIELD_VALUE.fullmatch(value):
        return None
    if not all(ord(ch) < 256 for ch in value):
        return "must be Latin-1 text (encode other characters, e.g. as in RFC 8187)"
    return "must not contain control characters or line breaks, nor start or end with a space"


def headers_to_send(raw: Any, what: str = "header") -> dict[str, str]:
    """Validate headers to pass to the hook: names are tokens, values are what HTTP can
    carry (a value that cannot be sent would fail every attempt)."""
    if not isinstance(raw, Mapping):
        raise bad("invalid_headers", "headers must be an object of strings")
    if len(raw) > MAX_HEADERS:
        raise bad("invalid_headers", f"at most {MAX_HEADERS} headers")
    total = 0
    for name, value in raw.items():
        if not isinstance(name, str) or not TOKEN.fullmatch(name) or not isinstance(value, str):
            raise bad("invalid_headers", f"{what} {name!r} is not a valid header name")
        problem = header_value_problem(value)
        if problem is not None:
            raise bad("invalid_headers", f"{what} {name!r}: the value {problem}")
        if name.lower() in RESERVED_HEADERS or name.lower().startswith("ntq-"):
            raise bad("invalid_headers", f"{what} {name!r} is set by ntq and cannot be passed")
        total += len(name) + len(value)
    if total > MAX_HEADER_BYTES:
        raise bad("invalid_headers", f"headers must total at most {MAX_HEADER_BYTES} bytes")
    return dict(raw)


def passthrough(headers: Mapping[str, str]) -> dict[str, str]:
    """``NTQ-PASSTHROUGH-X: v`` (or nTorque's prefix) becomes ``X: v``."""
    out = {}
    for name, value in headers.items():
        lowered = name.lower()
        for prefix in PASSTHROUGH_PREFIXES:
            if lowered.startswith(prefix) and len(name) > len(prefix):
                out[name[len(prefix) :]] = value
    return headers_to_send(out, "pass-through header")


def _schedule(params: Mapping[str, Any]) -> dict[str, Any]:
    if params.get("delay") is not None and params.get("not_before") is not None:
        raise bad("invalid_delay", "give delay or not_before, not both")
    out: dict[str, Any] = {}
    if params.get("delay") is not None:
        out["delay"] = _number("delay", params["delay"], 0, MAX_DELAY)
    if params.get("not_before") is not None:
        out["not_before"] = _timestamp(params["not_before"])
    return out


def common(params: Mapping[str, Any], settings: Settings) -> dict[str, Any]:
    """Fields shared by both forms, validated, with defaults from settings."""
    out: dict[str, Any] = {
        "url": _url("url", params.get("url")),
        "method": _method(params.get("method") or "POST"),
        "timeout": settings.default_timeout,
        "max_retries": settings.max_retries,
        "backoff": settings.backoff,
        **_schedule(params),
    }
    if params.get("timeout") is not None:
        out["timeout"] = _integer("timeout", params["timeout"], 1, settings.max_timeout)
    if params.get("max_retries") is not None:
        out["max_retries"] = _integer("max_retries", params["max_retries"], 0, 1000)
    if params.get("backoff") is not None:
        out["backoff"] = _choice("backoff", params["backoff"], BACKOFFS)
    if params.get("callback") is not None:
        out["callback"] = _url("callback", params["callback"])
    if params.get("cancel_notice") is not None:
        out["cancel_notice"] = _choice("cancel_notice", params["cancel_notice"], NOTICE_POLICIES)
    return out


def from_query(
    params: Mapping[str, str],
    headers: Mapping[str, str],
    body: bytes,
    content_type: str | None,
    settings: Settings,
) -> NewTask:
    """The nTorque-compatible form: parameters in the query, the body verbatim."""
    default_type = NTORQUE_CONTENT_TYPE if settings.ntorque_compat else None
    check_query_names(params.keys())
    return NewTask(
        **common(params, settings),
        headers=passthrough(headers),
        body=body,
        content_type=_sendable_content_type(content_type or default_type),
        idempotency_key=idempotency_key(headers),
    )


def check_query_names(names: Iterable[str]) -> None:
    """Refuse unknown and repeated query parameters, naming them. Either is most often a
    hook URL whose own query string was not encoded: its ``&`` split it up."""
    given = Counter(names)
    unknown = sorted(set(given) - QUERY_PARAMETERS)
    repeated = sorted(name for name in set(given) & QUERY_PARAMETERS if given[name] > 1)
    hint = (
        "; if the hook's url has a query string of its own, percent-encode it "
        "(its '&' and '=' as %26 and %3D)"
    )
    if unknown:
        raise bad("unknown_parameter", f"unknown query parameter(s): {', '.join(unknown)}{hint}")
    if repeated:
        raise bad(
            "repeated_parameter",
            f"query parameter(s) given more than once: {', '.join(repeated)}{hint}",
        )


def _sendable_content_type(value: str | None) -> str | None:
    """``value``, which becomes the delivery's ``Content-Type`` header, if HTTP can carry it."""
    problem = None if value is None else header_value_problem(value)
    if problem is not None:
        raise bad("invalid_content_type", f"content_type {problem}")
    return value


def idempotency_key(headers: Mapping[str, str]) -> str | None:
    value = headers.get("Idempotency-Key")
    return None if value is None else _text("idempotency_key", value, MAX_IDEMPOTENCY_KEY)


def _body(item: Mapping[str, Any]) -> tuple[bytes, str | None]:
    given = [k for k in ("body", "json", "body_base64") if k in item]
    if len(given) > 1:
        raise bad("invalid_body", "give only one of body, json and body_base64")
    if not given:
        return b"", None
    field = given[0]
    value = item[field]
    if field == "json":
        return orjson.dumps(value), "application/json"
    if not isinstance(value, str):
        raise bad("invalid_body", f"{field} must be a string")
    if field == "body":
        return value.encode(), "text/plain; charset=utf-8"
    try:
        return base64.b64decode(value, validate=True), None
    except (binascii.Error, ValueError):
        raise bad("invalid_body", "body_base64 is not valid base64") from None


def from_json(item: Any, settings: Settings) -> NewTask:
    """The structured form: one JSON object; unknown fields are rejected."""
    if not isinstance(item, dict):
        raise bad("invalid_task", "a task must be a JSON object")
    unknown = sorted(set(item) - JSON_FIELDS)
    if unknown:
        raise bad("unknown_field", f"unknown field(s): {', '.join(map(str, unknown))}")
    body, default_type = _body(item)
    if len(body) > settings.max_body_bytes:
        raise ApiError(
            413, "body_too_large", f"body must be at most {settings.max_body_bytes} bytes"
        )
    content_type = item.get("content_type", default_type)
    if content_type is not None:
        content_type = _sendable_content_type(_text("content_type", content_type, 255))
    key = item.get("idempotency_key")
    return NewTask(
        **common(item, settings),
        headers=headers_to_send(item.get("headers") or {}),
        body=body,
        content_type=content_type,
        idempotency_key=None if key is None else _text("idempotency_key", key, MAX_IDEMPOTENCY_KEY),
    )


MAX_LIST = 1000


def wait_seconds(raw: str | None, limit: float) -> float:
    """``?wait=N`` for long-polling: 0 to ``limit`` seconds."""
    return 0.0 if raw is None else _number("wait", raw, 0, limit)


def _any_time(name: str, raw: str | None) -> datetime | None:
    if raw is None:
        return None
    try:
        when = _timestamp(raw)
    except ApiError:
        raise bad(f"invalid_{name}", f"{name} must be an ISO 8601 time or epoch seconds") from None
    return when


def task_filter(params: Mapping[str, str]) -> TaskFilter:
    """The filters and page of ``GET /tasks``."""
    status = params.get("status")
    if status is not None and status.upper() not in STATUSES:
        raise bad("invalid_status", f"status must be one of {', '.join(STATUSES)}")
    before = params.get("before")
    try:
        cursor = uuid.UUID(before) if before else None
    except ValueError:
        raise bad("invalid_cursor", "before must be a task id") from None
    return TaskFilter(
        status=status.upper() if status else None,
        created_after=_any_time("created_after", params.get("created_after")),
        created_before=_any_time("created_before", params.get("created_before")),
        before=cursor,
        limit=_integer("limit", params.get("limit", "100"), 1, MAX_LIST),
    )


MAX_BATCH = 1000
MAX_BATCH_BYTES = 32 * 1024 * 1024


def json_document(content_type: str | None, raw: bytes) -> Any:
    """The request's JSON (415 for another content type, 400 when malformed)."""
    media = (content_type or "").split(";")[0].strip().lower()
    if media != "application/json":
        raise ApiError(415, "unsupported_media_type", "send tasks as application/json")
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise bad("invalid_json", f"the body is not valid JSON: {exc}") from None


def from_json_batch(items: Any, settings: Settings) -> list[NewTask]:
    """Validate every task of a batch; the first bad one is reported with its index."""
    if not isinstance(items, list) or not items:
        raise bad("invalid_batch", "send a task object or a non-empty array of them")
    if len(items) > MAX_BATCH:
        raise ApiError(413, "batch_too_large", f"at most {MAX_BATCH} tasks per request")
    batch = []
    for index, item in enumerate(items):
        try:
            batch.append(from_json(item, settings))
        except ApiError as exc:
            raise ApiError(
                exc.status, exc.code, f"task {index}: {exc.message}", index=index
            ) from None
    return batch
