"""Make the process cooperative for gevent: call :func:`patch` before anything else."""

from __future__ import annotations


def patch() -> None:
    """Monkey-patch the standard library and make psycopg2 wait on the gevent hub."""
    from gevent import monkey

    monkey.patch_all()
    from psycogreen.gevent import patch_psycopg

    patch_psycopg()
