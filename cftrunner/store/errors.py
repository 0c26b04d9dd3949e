"""Database errors translated into cftrunner's own, in one place: the store's boundary."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import sqlalchemy as sa

from cftrunner.exceptions import DatabaseError


def database_error(exc: sa.exc.SQLAlchemyError) -> DatabaseError:
    """`exc` as cftrunner reports it: its class and the first line of the driver's message."""
    text = str(getattr(exc, "orig", None) or exc)
    first = text.splitlines()[0] if text else ""
    return DatabaseError(f"state database: {exc.__class__.__name__}: {first}")


@contextmanager
def translated() -> Iterator[None]:
    """Raise a SQLAlchemy error from inside as DatabaseError, with the original as its cause.
    (The errors that say the database cannot be used are UnusableDatabaseError already.)"""
    try:
        yield
    except sa.exc.SQLAlchemyError as exc:
        raise database_error(exc) from exc
