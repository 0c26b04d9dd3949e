"""A local, in-memory Prem Studio API over real HTTP, with deterministic models and faults."""

from __future__ import annotations

from cftrunner.sandbox.app import DEFAULT_API_KEY, DEFAULT_PROJECT_ID, Sandbox
from cftrunner.sandbox.faults import FaultRule

__all__ = ["DEFAULT_API_KEY", "DEFAULT_PROJECT_ID", "FaultRule", "Sandbox"]
