"""The only module that calls webhooks: builds the request, signs it, sends it within the
task's timeout, reads a capped response and classifies the outcome."""

from __future__ import annotations

import re
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from http.cookiejar import DefaultCookiePolicy

import gevent
import requests
from requests.adapters import HTTPAdapter

from ntq import __version__, signing
from ntq.backoff import Backoff, parse_retry_after
from ntq.config import Settings
from ntq.records import Acquired, AttemptResult, Outcome, Verdict
from ntq.store.transitions import NOTICE_TIMEOUT
from ntq.urlsafety import AddressPolicy, BlockedAddress, guarded_pool_classes

USER_AGENT = f"ntq/{__version__}"
# What a requests session would add to every request.
BASE_HEADERS = {"Accept": "*/*", "Accept-Encoding": "gzip, deflate"}
MAX_REDIRECTS = 5
CHUNK = 16384


class DeliveryTimeout(Exception):
    """The whole attempt (connect, send, read) took longer than the task's timeout."""


def make_session(settings: Settings, pool_size: int) -> requests.Session:
    """A keep-alive session whose connections pass the SSRF guard before connecting."""
    session = requests.Session()
    session.trust_env = False  # an environment proxy would bypass the address check
    # One session serves every application's tasks: a cookie kept from one hook's answer
    # would be sent on to the next task for that host. Keep none.
    session.cookies.set_policy(DefaultCookiePolicy(allowed_domains=[]))
    session.max_redirects = MAX_REDIRECTS
    pools = guarded_pool_classes(AddressPolicy.from_settings(settings))
    for prefix in ("http://", "https://"):
        adapter = HTTPAdapter(pool_connections=64, pool_maxsize=pool_size, max_retries=0)
        adapter.poolmanager.pool_classes_by_scheme = pools
        session.mount(prefix, adapter)
    return session


def request_headers(task: Acquired, timestamp: int, ntorque: bool = False) -> dict[str, str]:
    """Pass-through headers, then ntq's own (which the client cannot override); with
    ``ntorque``, nTorque's names for the same facts too."""
    headers = dict(task.headers)
    if task.content_type:
        headers["Content-Type"] = task.content_type
    headers.update(
        {
            "User-Agent": USER_AGENT,
            "NTQ-Task-Id": str(task.id),
            "NTQ-Task-Attempt": str(task.retry_count),
            "NTQ-Task-Retry-Limit": str(task.max_retries),
        }
    )
    if ntorque:
        headers.update(ntorque_headers(task))
    headers.update(signing.headers(task.secret, str(task.id), timestamp, task.body))
    return headers


def ntorque_headers(task: Acquired) -> dict[str, str]:
    """nTorque's delivery headers (``NTQ_NTORQUE_COMPAT``): its retry count is the number
    of attempts made before this one."""
    return {
        "ntorque-task-id": str(task.id),
        "ntorque-task-retry-count": str(task.retry_count - 1),
        "ntorque-task-retry-limit": str(task.max_retries),
    }


def _read_capped(response: requests.Response, cap: int) -> tuple[bytes, bool]:
    body = bytearray()
    for chunk in response.iter_content(CHUNK):
        body += chunk
        if len(body) > cap:
            return bytes(body[:cap]), True
    return bytes(body), False


def call(
    session: requests.Session,
    method: str,
    url: str,
    headers: Mapping[str, str],
    body: bytes,
    timeout: float,
    max_response_bytes: int,
) -> AttemptResult:
    """Make one HTTP call bounded by ``timeout`` in total; never raises for HTTP trouble."""
    started = datetime.now(UTC)
    clock = time.monotonic()
    try:
        with gevent.Timeout(timeout, DeliveryTimeout):
            # Prepared here, not by session.request(): nothing of the session's (cookies,
            # auth, environment) is merged in, which also saves a fair share of CPU.
            prepared = requests.Request(
                method, url, headers={**BASE_HEADERS, **headers}, data=body or None
            ).prepare()
            response = session.send(prepared, timeout=timeout, stream=True, allow_redirects=True)
            try:
                content, truncated = _read_capped(response, max_response_bytes)
            finally:
                response.close()
    except DeliveryTimeout:
        return _failed(method, started, clock, f"timed out after {timeout:g} s")
    except requests.RequestException as exc:
        return _failed(method, started, clock, _describe(exc), _is_permanent(exc))
    except Exception as exc:  # recorded, not raised: see _unexpected
        return _failed(method, started, clock, *_unexpected(exc))
    return AttemptResult(
        method=method,
        started=started,
        elapsed_ms=_elapsed(clock),
        status_code=response.status_code,
        reason=response.reason,
        headers=dict(response.headers),
        body=content,
        truncated=truncated,
        retry_after=parse_retry_after(response.headers.get("Retry-After")),
    )


def _elapsed(clock: float) -> int:
    return int((time.monotonic() - clock) * 1000)


def _failed(
    method: str, started: datetime, clock: float, error: str, permanent: bool = False
) -> AttemptResult:
    return AttemptResult(
        method=method, started=started, elapsed_ms=_elapsed(clock), error=error, permanent=permanent
    )


PERMANENT = (
    requests.exceptions.InvalidURL,
    requests.exceptions.InvalidSchema,
    requests.exceptions.MissingSchema,
    requests.exceptions.InvalidHeader,
    requests.exceptions.URLRequired,
    requests.exceptions.TooManyRedirects,
)


def _unexpected(exc: Exception) -> tuple[str, bool]:
    """The error text of an exception that is not requests' own, and whether it is
    permanent. Letting it escape would end the attempt unrecorded, and the task would be
    retried forever as each lease expired. Outside the network (``OSError``) the cause is
    in the request itself (a header value that is not Latin-1, a redirect to a host name
    that cannot be encoded...) and would fail every attempt the same way."""
    return f"cannot send the request: {_describe(exc)}", not isinstance(exc, OSError)


def _is_permanent(exc: requests.RequestException) -> bool:
    return isinstance(exc, PERMANENT) or _blocked(exc) is not None


def _blocked(exc: BaseException) -> BlockedAddress | None:
    reason: BaseException | None = exc
    while reason is not None:
        if isinstance(reason, BlockedAddress):
            return reason
        reason = reason.__cause__ or reason.__context__
    return None


def _describe(exc: Exception) -> str:
    """A short error text naming the cause, never the URL (it may carry credentials)."""
    blocked = _blocked(exc)
    if blocked is not None:
        return str(blocked).split(": ", 1)[-1]  # drop urllib3's "<connection>: " prefix
    root: BaseException = exc
    while (inner := root.__cause__ or root.__context__) is not None:
        root = inner
    text = _OBJECT_PREFIX.sub("", str(root))
    return f"{type(exc).__name__}: {_URL_IN_TEXT.sub('', text)}".rstrip(": ")


_OBJECT_PREFIX = re.compile(r"^<[^>]*>: ")
_URL_IN_TEXT = re.compile(r"(with url: )?\S*://\S*|with url: \S+")


def deliver(session: requests.Session, task: Acquired, settings: Settings) -> AttemptResult:
    """One delivery attempt of ``task``."""
    headers = request_headers(task, int(time.time()), settings.ntorque_compat)
    return call(
        session,
        task.method,
        task.url,
        headers,
        task.body,
        task.timeout,
        settings.max_response_bytes,
    )


NOTICE_TRIES = 3


def send_cancel_notice(session: requests.Session, task: Acquired) -> AttemptResult:
    """``DELETE`` the cancelled task's URL so its service can stop the work (retried
    briefly on network errors). It is a message of its own: its ``webhook-id`` is the
    notice's identity, not the task id the deliveries carry, so a receiver that
    de-duplicates on it still sees the cancel; the same on each retry."""
    headers = {**task.headers, "User-Agent": USER_AGENT, "NTQ-Task-Id": str(task.id)}
    headers.update(signing.headers(task.secret, str(task.attempt_id), int(time.time()), b""))
    for attempt in range(1, NOTICE_TRIES + 1):
        result = call(session, "DELETE", task.url, headers, b"", NOTICE_TIMEOUT, 4096)
        if result.status_code is not None or attempt == NOTICE_TRIES:
            return result
        gevent.sleep(attempt)
    raise AssertionError("unreachable")


def classify(task: Acquired, result: AttemptResult, settings: Settings) -> Verdict:
    """The outcome rules: 2xx completes, transient trouble retries, the rest fails."""
    code = result.status_code
    if code is not None and 200 <= code < 300:
        return Verdict(Outcome.COMPLETE)
    error = result.error or f"HTTP {code} {result.reason or ''}".rstrip()
    transient = code is None or code >= 500 or code in settings.transient_request_errors
    if code == 410 or result.permanent or not transient:
        return Verdict(Outcome.FAIL, error=error)
    if task.retry_count > task.max_retries:
        return Verdict(Outcome.FAIL, error=f"out of retries: {error}")
    return Verdict(Outcome.RETRY, error=error, delay=_retry_delay(task, result, settings))


def _retry_delay(task: Acquired, result: AttemptResult, settings: Settings) -> float:
    if result.retry_after is not None:
        return min(result.retry_after, settings.max_due_delay)
    policy = Backoff(task.backoff, settings.min_due_delay, settings.max_due_delay)
    return policy.delay(task.retry_count)
