"""Row → record mapping: runs (with their lease), items and effects as the store returns them."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa

from cftrunner.records import Effect, EffectStatus, Holder, Item, LeaseInfo, Owner, Run
from cftrunner.states import ItemStage, RunState

LEASE_COLUMNS = ("lease_token", "lease_host", "lease_boot_id", "lease_pid", "lease_started",
                  "lease_expires_at")


def run_from(row: sa.Row[Any]) -> Run:
    m = dict(row._mapping)
    token, host, boot, pid, started, expires = (m.pop(c) for c in LEASE_COLUMNS)
    lease = (LeaseInfo(token, Owner(host or "", boot or "", pid or 0, started or ""), expires)
             if token else None)
    return Run(**{**m, "state": RunState(m["state"]), "lease": lease})


def lease_values(holder: Holder, expires_at: datetime) -> dict[str, Any]:
    owner = holder.owner
    return {"lease_token": holder.token, "lease_host": owner.host, "lease_boot_id": owner.boot_id,
            "lease_pid": owner.pid, "lease_started": owner.started, "lease_expires_at": expires_at}


def item_from(row: sa.Row[Any]) -> Item:
    m = row._mapping
    return Item(**{**m, "stage": ItemStage(m["stage"])})


def effect_from(row: sa.Row[Any]) -> Effect:
    m = row._mapping
    return Effect(**{**m, "status": EffectStatus(m["status"])})
