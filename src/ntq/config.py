"""Settings: the one place environment variables are read, parsed and validated.

Every setting is parsed once at start-up into a frozen :class:`Settings`. A bad value
raises :class:`ConfigError` naming the variable, and the command exits with that message.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class ConfigError(ValueError):
    """A setting has a value ntq cannot use."""


def _bool(raw: str) -> bool:
    value = raw.strip().lower()
    if value in {"1", "true", "yes", "on"}:
        return True
    if value in {"0", "false", "no", "off", ""}:
        return False
    raise ValueError("expected true or false")


def _int_range(low: int, high: int) -> Callable[[str], int]:
    def parse(raw: str) -> int:
        value = int(raw.strip())
        if not low <= value <= high:
            raise ValueError(f"expected an integer from {low} to {high}")
        return value

    return parse


def _float_range(low: float, high: float) -> Callable[[str], float]:
    def parse(raw: str) -> float:
        value = float(raw.strip())
        if not low <= value <= high:
            raise ValueError(f"expected a number from {low} to {high}")
        return value

    return parse


def _choice(*options: str) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        value = raw.strip().lower()
        if value not in options:
            raise ValueError(f"expected one of {', '.join(options)}")
        return value

    return parse


def _status_codes(raw: str) -> frozenset[int]:
    codes = frozenset(int(part) for part in raw.replace(",", " ").split())
    if any(not 100 <= code <= 599 for code in codes):
        raise ValueError("expected HTTP status codes between 100 and 599")
    return codes


def _networks(raw: str) -> tuple[bool, tuple[Network, ...]]:
    """``true``/``false``, or a comma-separated list of CIDR blocks to allow."""
    try:
        return _bool(raw), ()
    except ValueError:
        nets = tuple(ipaddress.ip_network(p.strip(), strict=False) for p in raw.split(",") if p)
        return False, nets


def _url(raw: str) -> str | None:
    return raw.strip() or None


@dataclass(frozen=True)
class Settings:
    """Every tunable of ntq, parsed and validated."""

    database_url: str | None = None
    redis_url: str | None = None
    port: int = 8080
    data_dir: Path = Path(".ntq")
    authenticate: bool = True
    default_timeout: int = 60
    max_timeout: int = 3600
    backoff: str = "exponential"
    min_due_delay: float = 2.0
    max_due_delay: float = 7200.0
    max_retries: int = 36
    transient_request_errors: frozenset[int] = frozenset({408, 423, 425, 429, 449})
    requeue_interval: float = 5.0
    cleanup_after_days: float = 7.0
    redis_channel: str = "ntq"
    worker_concurrency: int = 100
    worker_grace: float = 30.0
    web_concurrency: int = 2
    max_body_bytes: int = 1024 * 1024
    body_timeout: float = 30.0
    max_response_bytes: int = 65536
    allow_private_networks: bool = False
    allowed_networks: tuple[Network, ...] = field(default=())
    enable_hsts: bool = False
    ntorque_compat: bool = False
    log_format: str = "json"

    @property
    def queue_key(self) -> str:
        """The Redis list workers BLPOP task ids from."""
        return self.redis_channel

    @property
    def scheduled_key(self) -> str:
        """The Redis sorted set of task ids waiting for a near-future due time."""
        return f"{self.redis_channel}:scheduled"

    def finished_channel(self, task_id: object) -> str:
        """The pub/sub channel announcing that one task reached a terminal state."""
        return f"{self.redis_channel}:finished:{task_id}"

    @property
    def cancel_channel(self) -> str:
        """The Redis pub/sub channel that carries cancellations to every worker."""
        return f"{self.redis_channel}:cancel"


# variable name -> (field name, parser)
_SPEC: dict[str, tuple[str, Callable[[str], Any]]] = {
    "DATABASE_URL": ("database_url", _url),
    "REDIS_URL": ("redis_url", _url),
    "PORT": ("port", _int_range(1, 65535)),
    "NTQ_DATA_DIR": ("data_dir", lambda raw: Path(raw.strip())),
    "NTQ_AUTHENTICATE": ("authenticate", _bool),
    "NTQ_DEFAULT_TIMEOUT": ("default_timeout", _int_range(1, 86400)),
    "NTQ_MAX_TIMEOUT": ("max_timeout", _int_range(1, 86400)),
    "NTQ_BACKOFF": ("backoff", _choice("exponential", "linear")),
    "NTQ_MIN_DUE_DELAY": ("min_due_delay", _float_range(0.0, 86400.0)),
    "NTQ_MAX_DUE_DELAY": ("max_due_delay", _float_range(0.0, 30 * 86400.0)),
    "NTQ_MAX_RETRIES": ("max_retries", _int_range(0, 1000)),
    "NTQ_TRANSIENT_REQUEST_ERRORS": ("transient_request_errors", _status_codes),
    "NTQ_REQUEUE_INTERVAL": ("requeue_interval", _float_range(0.1, 3600.0)),
    "NTQ_CLEANUP_AFTER_DAYS": ("cleanup_after_days", _float_range(0.0, 36500.0)),
    "NTQ_REDIS_CHANNEL": ("redis_channel", lambda raw: _nonempty(raw)),
    "NTQ_WORKER_CONCURRENCY": ("worker_concurrency", _int_range(1, 10000)),
    "NTQ_WORKER_GRACE": ("worker_grace", _float_range(0.0, 86400.0)),
    "WEB_CONCURRENCY": ("web_concurrency", _int_range(1, 256)),
    "NTQ_MAX_BODY_BYTES": ("max_body_bytes", _int_range(1, 512 * 1024 * 1024)),
    "NTQ_BODY_TIMEOUT": ("body_timeout", _float_range(0.1, 3600.0)),
    "NTQ_MAX_RESPONSE_BYTES": ("max_response_bytes", _int_range(0, 64 * 1024 * 1024)),
    "NTQ_ENABLE_HSTS": ("enable_hsts", _bool),
    "NTQ_NTORQUE_COMPAT": ("ntorque_compat", _bool),
    "NTQ_LOG_FORMAT": ("log_format", _choice("json", "console")),
}


def _nonempty(raw: str) -> str:
    value = raw.strip()
    if not value:
        raise ValueError("must not be empty")
    return value


def load_settings(environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
    """Parse settings from ``environ`` (default: the process environment).

    ``overrides`` (already parsed, keyed by field name) win over the environment; the
    command line uses them for its options.
    """
    env = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    for name, (attr, parse) in _SPEC.items():
        if name in env:
            values[attr] = _parse(name, env[name], parse)
    if "NTQ_ALLOW_PRIVATE_NETWORKS" in env:
        allow, nets = _parse(
            "NTQ_ALLOW_PRIVATE_NETWORKS", env["NTQ_ALLOW_PRIVATE_NETWORKS"], _networks
        )
        values.update(allow_private_networks=allow, allowed_networks=nets)
    values.update({k: v for k, v in overrides.items() if v is not None})
    if "NTQ_REDIS_VERIFY_TLS" in env and not _parse(
        "NTQ_REDIS_VERIFY_TLS", env["NTQ_REDIS_VERIFY_TLS"], _bool
    ):
        values["redis_url"] = _unverified_tls(values.get("redis_url"))
    settings = Settings(**values)
    _check_consistency(settings)
    return settings


def option_default(variable: str, default: str | None = None) -> str | None:
    """The raw value of ``variable``, for a command-line option that defaults to it
    (``NTQ_HOST``, ``NTQ_BENCH_*``: options of one command, not settings of the service)."""
    return os.environ.get(variable, default)


def option_flag(variable: str) -> bool:
    """``variable`` as an on/off option default: anything but a true value is off."""
    try:
        return _bool(os.environ.get(variable, ""))
    except ValueError:
        return False


def parser(variable: str) -> Callable[[str], Any]:
    """How ``variable`` is parsed and checked, for a command-line option that sets the same
    thing (a bad value raises ValueError saying what is expected)."""
    return _SPEC[variable][1]


def _unverified_tls(url: str | None) -> str | None:
    """A ``rediss://`` URL whose server certificate is not verified (redis-py reads
    ``ssl_cert_reqs`` from the query): hosted Redis often presents a self-signed one."""
    if url is None or not url.startswith("rediss://") or "ssl_cert_reqs=" in url:
        return url
    return url + ("&" if "?" in url else "?") + "ssl_cert_reqs=none"


def _parse(name: str, raw: str, parse: Callable[[str], T]) -> T:
    try:
        return parse(raw)
    except ValueError as exc:
        raise ConfigError(f"{name}={raw!r} is invalid: {exc}") from exc


def _check_consistency(settings: Settings) -> None:
    if settings.default_timeout > settings.max_timeout:
        raise ConfigError("NTQ_DEFAULT_TIMEOUT must not exceed NTQ_MAX_TIMEOUT")
    if settings.min_due_delay > settings.max_due_delay:
        raise ConfigError("NTQ_MIN_DUE_DELAY must not exceed NTQ_MAX_DUE_DELAY")
