"""How messages word what they tell people: spans of time (the one format), and the commands
to run next."""

from __future__ import annotations

from datetime import datetime


def duration(seconds: float) -> str:
    """At most two units, the larger first: 4.2s, 45s, 5m00s, 2h30m, 1d02h."""
    if seconds < 10:
        return f"{max(0.0, seconds):.1f}s"
    whole = int(seconds)
    if whole < 60:
        return f"{whole}s"
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    if whole < 86400:
        return f"{whole // 3600}h{whole % 3600 // 60:02d}m"
    return f"{whole // 86400}d{whole % 86400 // 3600:02d}h"


def age(then: datetime, now: datetime) -> str:
    """The time from `then` to `now`."""
    return duration((now - then).total_seconds())


def settle_command(run_id: str, key: str) -> str:
    """What a person runs to decide an effect whose outcome is unknown."""
    kind = key.partition(":")[0]
    known = " --id ID" if kind in ("trace", "snapshot", "launch") else ""
    return (f"decide with `cftrunner settle {run_id} {key} --happened{known}` "
            "or `--not-happened`")
