"""``POST /``'s query string (issue 10 item 14): every parameter the SPEC names is
accepted; any other, or one given twice, is a 400 naming it, like an unknown JSON field."""

from __future__ import annotations

from urllib.parse import urlencode

import pytest
from webob import Request

from ntq.config import Settings
from ntq.records import NewTask
from ntq.web.api.errors import ApiError
from ntq.web.api.schemas import from_query

HOOK = "https://example.com/hook"


def parse(query: str) -> NewTask:
    """``from_query`` on the query string as the web decodes it (a multi-valued dict)."""
    return from_query(Request.blank("/?" + query).GET, {}, b"", None, Settings())


def refusal(query: str) -> ApiError:
    with pytest.raises(ApiError) as info:
        parse(query)
    assert info.value.status == 400
    return info.value


def test_every_documented_parameter_is_accepted() -> None:
    new = parse(
        urlencode(
            {
                "url": HOOK,
                "method": "PUT",
                "timeout": "5",
                "delay": "3",
                "max_retries": "2",
                "backoff": "linear",
                "callback": "https://example.com/done",
                "cancel_notice": "always",
            }
        )
    )
    assert (new.url, new.method, new.timeout, new.delay) == (HOOK, "PUT", 5, 3)
    assert (new.max_retries, new.backoff, new.callback) == (2, "linear", "https://example.com/done")
    assert parse(urlencode({"url": HOOK, "not_before": "2026-01-01T00:00:00Z"})).not_before


def test_a_hook_url_whose_ampersand_was_not_encoded_is_refused_naming_the_rest() -> None:
    error = refusal(f"url={HOOK}?page=2&sort=asc&method=PUT")
    assert error.code == "unknown_parameter"
    assert "sort" in error.message
    assert "page" not in error.message  # still inside url's value
    assert "percent-encode" in error.message


def test_every_unknown_parameter_is_named() -> None:
    error = refusal(urlencode({"url": HOOK, "tiemout": "5", "retries": "3"}))
    assert error.code == "unknown_parameter"
    assert "retries, tiemout" in error.message


def test_a_parameter_given_twice_is_refused() -> None:
    error = refusal(urlencode([("url", HOOK), ("url", "https://example.com/other")]))
    assert error.code == "repeated_parameter"
    assert "url" in error.message


def test_the_encoded_form_of_the_same_url_is_accepted() -> None:
    url = f"{HOOK}?page=2&sort=asc"
    assert parse(urlencode({"url": url})).url == url
