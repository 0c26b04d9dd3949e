"""What start, resume, tick and cancel do once their own work is done: notifications, then the metrics file.

This never changes how the command ends: whatever fails here is logged as a warning (at debug
level when the command failed already, which said why), and the exit status stays the command's.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import structlog

from cftrunner.config.resolution import Resolved
from cftrunner.service import notify
from cftrunner.service.notify import Rejection
from cftrunner.store import Store
from cftrunner.store.watch import state_present

log = structlog.get_logger("cftrunner")


@dataclass(frozen=True)
class Invocation:
    """A command that has done its work: its name, its exit status, the key refusals it met, and
    whether its state database may be opened (not after the database itself failed, nor after
    SIGINT or SIGTERM, which ask for a prompt exit)."""

    command: str
    exit_code: int
    rejections: tuple[Rejection, ...] = ()
    database: bool = True


def afterwards(resolved: Resolved, invocation: Invocation) -> None:
    """Record and send the notifications due, then write the metrics file, if one is set. The
    state database is opened only if it is there: this creates none."""
    settings = resolved.settings
    level = logging.WARNING if invocation.exit_code == 0 else logging.DEBUG
    store: Store | None = None
    if invocation.database:
        try:
            if state_present(settings.db_url):
                store = Store(settings.db_url)
        except Exception as exc:  # noqa: BLE001 - never changes how the command ends
            log.log(level, "notify_failed", error=_said(exc))
    try:
        if store is not None:
            try:
                notify.record(store, settings, resolved.cycles, invocation.rejections)
                notify.deliver(store, settings)
            except Exception as exc:  # noqa: BLE001 - a notification never fails a run
                log.warning("notify_failed", error=_said(exc))
        if settings.metrics_file:
            try:
                from cftrunner.service import metrics  # prometheus_client, only when needed

                metrics.write(settings.metrics_file, resolved.cycles, store, invocation.command,
                              invocation.exit_code)
            except Exception as exc:  # noqa: BLE001 - nor does the metrics file
                log.warning("metrics_failed", path=settings.metrics_file, error=_said(exc))
    finally:
        if store is not None:
            store.close()


def _said(exc: Exception) -> str:
    """An error as one short line: its class and the first line of its message."""
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__
