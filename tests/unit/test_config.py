"""Settings (SPEC §7): read once, parsed as real types, bad values refused by name."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest
import redis

from ntq.config import ConfigError, load_settings


def test_defaults_are_the_documented_ones() -> None:
    s = load_settings({})
    assert (s.database_url, s.redis_url) == (None, None)
    assert s.port == 8080
    assert s.data_dir == Path(".ntq")
    assert s.authenticate is True
    assert (s.default_timeout, s.max_timeout) == (60, 3600)
    assert (s.backoff, s.min_due_delay, s.max_due_delay) == ("exponential", 2, 7200)
    assert s.max_retries == 36
    assert s.transient_request_errors == {408, 423, 425, 429, 449}
    assert s.requeue_interval == 5
    assert s.cleanup_after_days == 7
    assert s.redis_channel == "ntq"
    assert s.worker_concurrency == 100
    assert s.max_body_bytes == 1024 * 1024
    assert s.body_timeout == 30
    assert s.max_response_bytes == 65536
    assert s.allow_private_networks is False
    assert s.enable_hsts is False
    assert s.log_format == "json"


def test_values_are_parsed_into_numbers_and_flags() -> None:
    """nTorque never parsed its settings: ``"5" * 2`` is not a delay."""
    s = load_settings(
        {
            "PORT": "9000",
            "NTQ_AUTHENTICATE": "false",
            "NTQ_DEFAULT_TIMEOUT": " 30 ",
            "NTQ_MAX_TIMEOUT": "600",
            "NTQ_BACKOFF": "LINEAR",
            "NTQ_MIN_DUE_DELAY": "0.5",
            "NTQ_MAX_DUE_DELAY": "60",
            "NTQ_MAX_RETRIES": "3",
            "NTQ_TRANSIENT_REQUEST_ERRORS": "429, 503 418",
            "NTQ_REQUEUE_INTERVAL": "0.5",
            "NTQ_CLEANUP_AFTER_DAYS": "1.5",
            "NTQ_REDIS_CHANNEL": "other",
            "NTQ_WORKER_CONCURRENCY": "7",
            "NTQ_MAX_BODY_BYTES": "1000",
            "NTQ_BODY_TIMEOUT": "2.5",
            "NTQ_MAX_RESPONSE_BYTES": "0",
            "NTQ_ENABLE_HSTS": "yes",
            "NTQ_LOG_FORMAT": "console",
            "NTQ_DATA_DIR": "/tmp/x",
            "DATABASE_URL": "postgresql://h/db",
            "REDIS_URL": "redis://h:1/0",
        }
    )
    assert s.port == 9000
    assert s.authenticate is False
    assert (s.default_timeout, s.max_timeout) == (30, 600)
    assert s.backoff == "linear"
    assert (s.min_due_delay, s.max_due_delay) == (0.5, 60.0)
    assert s.max_retries == 3
    assert s.transient_request_errors == {429, 503, 418}
    assert s.requeue_interval == 0.5
    assert s.cleanup_after_days == 1.5
    assert s.redis_channel == "other"
    assert s.worker_concurrency == 7
    assert (s.max_body_bytes, s.max_response_bytes) == (1000, 0)
    assert s.body_timeout == 2.5
    assert s.enable_hsts is True
    assert s.log_format == "console"
    assert s.data_dir == Path("/tmp/x")
    assert s.database_url == "postgresql://h/db"
    assert s.redis_url == "redis://h:1/0"


def test_private_networks_true_or_a_cidr_allow_list() -> None:
    assert load_settings({"NTQ_ALLOW_PRIVATE_NETWORKS": "true"}).allow_private_networks
    s = load_settings({"NTQ_ALLOW_PRIVATE_NETWORKS": "10.0.0.0/8, 192.168.1.0/24"})
    assert s.allow_private_networks is False
    assert ipaddress.ip_address("10.1.2.3") in s.allowed_networks[0]
    assert ipaddress.ip_address("192.168.1.9") in s.allowed_networks[1]


BAD_VALUES = [
    ("PORT", "eighty"),
    ("PORT", "0"),
    ("PORT", "70000"),
    ("NTQ_AUTHENTICATE", "maybe"),
    ("NTQ_DEFAULT_TIMEOUT", "sixty"),
    ("NTQ_DEFAULT_TIMEOUT", "0"),
    ("NTQ_DEFAULT_TIMEOUT", "1.5"),
    ("NTQ_MAX_TIMEOUT", "-1"),
    ("NTQ_BACKOFF", "fibonacci"),
    ("NTQ_MIN_DUE_DELAY", "soon"),
    ("NTQ_MIN_DUE_DELAY", "-1"),
    ("NTQ_MAX_DUE_DELAY", "forever"),
    ("NTQ_MAX_RETRIES", "lots"),
    ("NTQ_MAX_RETRIES", "-1"),
    ("NTQ_TRANSIENT_REQUEST_ERRORS", "429,abc"),
    ("NTQ_TRANSIENT_REQUEST_ERRORS", "99"),
    ("NTQ_TRANSIENT_REQUEST_ERRORS", "600"),
    ("NTQ_REQUEUE_INTERVAL", "0"),
    ("NTQ_REQUEUE_INTERVAL", "often"),
    ("NTQ_CLEANUP_AFTER_DAYS", "-3"),
    ("NTQ_CLEANUP_AFTER_DAYS", "week"),
    ("NTQ_REDIS_CHANNEL", "  "),
    ("NTQ_WORKER_CONCURRENCY", "0"),
    ("NTQ_WORKER_CONCURRENCY", "many"),
    ("NTQ_MAX_BODY_BYTES", "1MB"),
    ("NTQ_MAX_BODY_BYTES", "0"),
    ("NTQ_BODY_TIMEOUT", "0"),
    ("NTQ_BODY_TIMEOUT", "slow"),
    ("NTQ_MAX_RESPONSE_BYTES", "-1"),
    ("NTQ_ALLOW_PRIVATE_NETWORKS", "sometimes"),
    ("NTQ_ALLOW_PRIVATE_NETWORKS", "10.0.0.0/33"),
    ("NTQ_ENABLE_HSTS", "please"),
    ("NTQ_LOG_FORMAT", "xml"),
]


@pytest.mark.parametrize(("name", "value"), BAD_VALUES)
def test_bad_value_raises_config_error_naming_the_variable(name: str, value: str) -> None:
    with pytest.raises(ConfigError, match=name):
        load_settings({name: value})


@pytest.mark.parametrize(
    ("env", "names"),
    [
        (
            {"NTQ_DEFAULT_TIMEOUT": "120", "NTQ_MAX_TIMEOUT": "60"},
            ("NTQ_DEFAULT_TIMEOUT", "NTQ_MAX_TIMEOUT"),
        ),
        (
            {"NTQ_MIN_DUE_DELAY": "10", "NTQ_MAX_DUE_DELAY": "5"},
            ("NTQ_MIN_DUE_DELAY", "NTQ_MAX_DUE_DELAY"),
        ),
    ],
)
def test_inconsistent_values_are_refused_by_name(
    env: dict[str, str], names: tuple[str, ...]
) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(env)
    assert all(name in str(info.value) for name in names)


def test_unrelated_environment_is_ignored() -> None:
    assert load_settings({"HOME": "/root", "NTQ_UNKNOWN_THING": "x"}) == load_settings({})


def test_redis_tls_without_verification_for_self_signed_hosted_servers() -> None:
    """Hosted Redis (Heroku's, for one) hands out ``rediss://`` URLs whose certificate is
    self-signed: ``NTQ_REDIS_VERIFY_TLS=false`` makes redis-py accept it."""
    url = "rediss://:secret@redis.example.com:6380"
    settings = load_settings({"REDIS_URL": url, "NTQ_REDIS_VERIFY_TLS": "false"})
    assert settings.redis_url is not None
    pool = redis.Redis.from_url(settings.redis_url).connection_pool
    assert pool.connection_kwargs["ssl_cert_reqs"] == "none"
    assert load_settings({"REDIS_URL": url}).redis_url == url  # verified by default
    plain = "redis://127.0.0.1:6379/0"
    assert load_settings({"REDIS_URL": plain, "NTQ_REDIS_VERIFY_TLS": "false"}).redis_url == plain
    with pytest.raises(ConfigError, match="NTQ_REDIS_VERIFY_TLS"):
        load_settings({"REDIS_URL": url, "NTQ_REDIS_VERIFY_TLS": "maybe"})
