"""What a run id may be: a plain name, safe in a file name, a URL, a log line and a shell."""

from __future__ import annotations

import re
import secrets

from cftrunner.clock import utcnow
from cftrunner.exceptions import InputError

MAX_LENGTH = 100
# ASCII only: str.isalnum and str.isdigit take letters and digits of every script ("١٢٣").
_RUN_ID = re.compile(rf"[A-Za-z0-9_-][A-Za-z0-9._-]{{0,{MAX_LENGTH - 1}}}")
RULE = (f"1 to {MAX_LENGTH} ASCII letters, digits, '-', '_' or '.', not starting with '.'")


def check_run_id(run_id: str) -> str:
    """The run id, if it is one cftrunner accepts; InputError otherwise, for every command alike."""
    if not _RUN_ID.fullmatch(run_id):
        raise InputError(f"run id {run_id!r} must be {RULE}")
    return run_id


def new_run_id() -> str:
    """A fresh run id: when it was made, and random enough that two never meet."""
    return utcnow().strftime("%Y%m%d-%H%M%S-") + secrets.token_hex(3)
