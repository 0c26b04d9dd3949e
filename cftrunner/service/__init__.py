"""What each command does, as library calls: the CLI is a thin layer over these.

`start`, `resume`, `cancel` and `settle` change a run; `tick` and `tick_each` run the cycles cron
starts; `status_text`, `show_text` and `plan_text` read; `demo` and `serve_sandbox` run the local
sandbox."""

from __future__ import annotations

from cftrunner.service.demo import DEMO_MODEL, demo, serve_sandbox
from cftrunner.service.looks import plan_text, show_text, status_text
from cftrunner.service.runs import MISSING_KEY, cancel, resume, settle, start
from cftrunner.service.tick import Ticked, preview_text, tick, tick_each

__all__ = ["DEMO_MODEL", "MISSING_KEY", "Ticked", "cancel", "demo", "plan_text", "preview_text",
           "resume", "serve_sandbox", "settle", "show_text", "start", "status_text", "tick",
           "tick_each"]
