"""Clean stops: SIGTERM and SIGINT ask the run to stop at its next checkpoint, within a grace time."""

from __future__ import annotations

import os
import signal
import threading
from types import FrameType

import structlog

log = structlog.get_logger("cftrunner")


class Stop:
    """A stop request that sleeping and checkpoints both see."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self.signum: int | None = None

    @property
    def requested(self) -> bool:
        return self._event.is_set()

    def request(self, signum: int) -> None:
        self.signum = signum
        self._event.set()

    def wait(self, seconds: float) -> bool:
        """Sleep up to `seconds`; True as soon as a stop is requested."""
        return self._event.wait(max(0.0, seconds))


def install(stop: Stop, grace: float) -> None:
    """Route SIGTERM and SIGINT to `stop`. The request in flight may finish for `grace` seconds;
    then, or at a second signal, the process exits at once: intents keep the run consistent."""

    def handler(signum: int, _frame: FrameType | None) -> None:
        if stop.requested:
            os._exit(128 + signum)
        stop.request(signum)
        log.warning("shutdown_requested", signal=signal.Signals(signum).name, grace_s=grace)
        timer = threading.Timer(grace, os._exit, args=(128 + signum,))
        timer.daemon = True
        timer.start()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


class Cancelled(Exception):
    """The run was asked to stop for good (`cftrunner cancel`); raised at a checkpoint."""
