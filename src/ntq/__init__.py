"""ntq: a durable webhook task queue."""

__version__ = "0.1.0"
