"""Webhook notifications: a JSON POST for each end a run reaches and for a refused key, sent once.

Every run-driving command, once its own work is done, records a delivery for each state in NOTIFIED
that a run reached without one (found in the state database, so a run that ended in a process
that died is found by the next), and for a key the API refused; then it sends those that are due,
one POST each, with a short timeout. A failed one is due again after a backoff (notify.retry_delay,
doubling, at most an hour) and is sent by a later invocation, until it is delivered or given up: at
once for a 4xx other than 408, 425 and 429 (the receiver refuses it, and will again), else at the
first failure once notify.give_up has passed since the event. Nothing here stops or fails a run,
and the API key is taken out of every text before it is stored or sent.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import requests
import structlog

from cftrunner import __version__, crashpoints
from cftrunner.client import redact
from cftrunner.clock import utcnow
from cftrunner.config.cycle import Cycle
from cftrunner.config.settings import Settings
from cftrunner.records import Run
from cftrunner.states import ITEM_FAILED, ItemStage, RunState
from cftrunner.store import Store
from cftrunner.store.deliveries import DELIVERED, GIVEN_UP, NO_WEBHOOK, PENDING, Delivery

log = structlog.get_logger("cftrunner")
NOTIFIED: tuple[str, ...] = tuple(state.value for state in (
    RunState.LAUNCHED, RunState.FAILED, RunState.SKIPPED, RunState.CANCELLED, RunState.TRAINED,
    RunState.PROMOTED, RunState.NOT_PROMOTED, RunState.TRAIN_FAILED))
KEY_REJECTED = "KEY_REJECTED"
MAX_RETRY_DELAY = 3600.0
# The receiver's refusals that a retry will not change; 408, 425 and 429 ask to try again.
_RETRIED_4XX = frozenset({408, 425, 429})


@dataclass(frozen=True)
class Rejection:
    """The API refused the key: while a run was driven (`run_id`), or before one existed (`cycle`)."""

    message: str
    run_id: str | None = None
    cycle: str | None = None


def webhook_for(cycles: Sequence[Cycle], name: str | None) -> str | None:
    """The webhook of the cycle named `name`; for a cycle the config does not describe, the one
    all its cycles share, if they share one."""
    for cycle in cycles:
        if cycle.title == name:
            return cycle.notify_webhook_url
    urls = {cycle.notify_webhook_url for cycle in cycles}
    return urls.pop() if len(urls) == 1 else None


def record(store: Store, settings: Settings, cycles: Sequence[Cycle],
           rejections: Sequence[Rejection] = ()) -> int:
    """Record a delivery for each notified state a run reached without one, and for each
    rejection not recorded yet; how many are new."""
    crashpoints.reach("notify.before_record")
    rows: list[dict[str, Any]] = []
    for run, reached in store.runs_to_notify(NOTIFIED):
        items = _items(store, run)
        url = webhook_for(cycles, run.cycle)
        for one in reached:
            reason = one.reason
            if one.state in (RunState.PROMOTED, RunState.NOT_PROMOTED) and run.promotion:
                reason = reason or run.promotion.get("reason")
            payload = _payload(run.id, one.state, run, one.state, reason, items, one.at)
            rows.append(_row(run.id, one.state, run, run.cycle, url, payload, one.at, settings))
    now = utcnow()
    for rejection in rejections:
        refused = store.run(rejection.run_id) if rejection.run_id else None
        cycle = refused.cycle if refused is not None else rejection.cycle
        if refused is not None:
            subject = refused.id
        else:
            subject = f"cycle {cycle or '-'} after {store.latest_run_id(cycle or '') or '-'}"
        payload = _payload(subject, KEY_REJECTED, refused, refused.state.value if refused else None,
                           rejection.message, _items(store, refused) if refused else None, now,
                           cycle)
        rows.append(_row(subject, KEY_REJECTED, refused, cycle, webhook_for(cycles, cycle),
                         payload, now, settings))
    return store.record_deliveries(rows) if rows else 0


def deliver(store: Store, settings: Settings) -> None:
    """Send each delivery that is due, once; a webhook that fails is not tried again by this
    invocation, its other deliveries left for the next."""
    due = store.due_deliveries(utcnow())
    failing: set[str] = set()
    if not due:
        return
    with requests.Session() as session:
        for delivery in due:
            assert delivery.url is not None  # only a delivery with a webhook is pending
            where = endpoint(delivery.url)
            if where in failing:
                continue
            crashpoints.reach("notify.before_send")
            attempt = delivery.attempts + 1
            retry_at = utcnow() + timedelta(seconds=retry_delay(settings, attempt))
            if not store.claim_delivery(delivery, retry_at):
                continue  # another process sends it
            error, final = _post(session, delivery, settings.notify_timeout)
            fields = {"run_id": delivery.run_id, "cycle": delivery.cycle,
                      "notification": delivery.event, "webhook": where, "attempt": attempt}
            if error is None:
                store.settle_delivery(delivery, DELIVERED, None)
                log.info("notification_delivered", **fields)
                continue
            late = utcnow() - delivery.created_at >= timedelta(seconds=settings.notify_give_up)
            status = GIVEN_UP if final or late else PENDING
            store.settle_delivery(delivery, status, error)
            if status == GIVEN_UP:
                log.warning("notification_given_up", error=error, **fields)
            else:
                log.warning("notification_failed", error=error, retry_at=retry_at.isoformat(),
                            **fields)
                failing.add(where)


def retry_delay(settings: Settings, attempt: int) -> float:
    """Seconds before a delivery whose `attempt` failed is due again."""
    return float(min(settings.notify_retry_delay * 2 ** min(attempt - 1, 30), MAX_RETRY_DELAY))


def endpoint(url: str) -> str:
    """A webhook as logs name it: scheme, host and port, never its path (which may be its
    secret) nor any user and password."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname or ''}{f':{parts.port}' if parts.port else ''}"


def _post(session: requests.Session, delivery: Delivery, timeout: float) -> tuple[str | None, bool]:
    """One POST: None when the receiver took it (a 2xx), else what went wrong and whether it is
    final. No redirect is followed: it would turn the POST into a GET."""
    body = json.dumps(delivery.payload, ensure_ascii=False).encode("utf-8")
    try:
        answer = session.post(str(delivery.url), data=body, timeout=(timeout, timeout),
                              allow_redirects=False,
                              headers={"Content-Type": "application/json",
                                       "User-Agent": f"cftrunner/{__version__}"})
    except requests.Timeout:
        return f"no answer within {timeout:g} s", False
    except requests.ConnectionError:
        return "could not connect", False
    except requests.RequestException as exc:
        return type(exc).__name__, False
    answer.close()
    if 200 <= answer.status_code < 300:
        return None, False
    code = answer.status_code
    return f"HTTP {code}", 400 <= code < 500 and code not in _RETRIED_4XX


def _items(store: Store, run: Run) -> dict[str, int]:
    """The run's items: their total and how many are at each stage, as `status --json` has them."""
    _, stages = store.stage_counts(run.id)
    return {"total": sum(stages.values()), **{stage.value: stages.get(stage.value, 0)
                                              for stage in ItemStage}}


def _row(subject: str, event: str, run: Run | None, cycle: str | None, url: str | None,
         payload: dict[str, Any], at: datetime, settings: Settings) -> dict[str, Any]:
    return {"subject": subject, "event": event, "run_id": run.id if run else None, "cycle": cycle,
            "url": url, "payload": scrubbed(payload, settings.api_key),
            "status": PENDING if url else NO_WEBHOOK, "created_at": at}


def _payload(subject: str, event: str, run: Run | None, state: str | None, reason: str | None,
             items: dict[str, int] | None, at: datetime, cycle: str | None = None) -> dict[str, Any]:
    """What is POSTed: the facts as fields, and `text`, the line a chat's incoming webhook shows."""
    cycle = run.cycle if run is not None else cycle
    mean = (run.gate_result or {}).get("mean_score") if run is not None else None
    job_id = run.job_id if run is not None else None
    return {"id": f"{subject}/{event}", "event": event, "run_id": run.id if run else None,
            "cycle": cycle, "state": state, "reason": reason, "items": items,
            "mean_score": mean, "job_id": job_id, "at": at.isoformat(),
            "text": _text(event, run, cycle, state, reason, items, mean)}


def _text(event: str, run: Run | None, cycle: str | None, state: str | None, reason: str | None,
          items: dict[str, int] | None, mean: float | None) -> str:
    words = ["cftrunner:"] + ([f"cycle {cycle}:"] if cycle else [])
    if event == KEY_REJECTED:
        words.append(f"the API refused the key while run {run.id} was {state}:" if run
                     else "the API refused the key:")
        return " ".join([*words, reason or ""]).strip()
    assert run is not None
    line = " ".join([*words, f"run {run.id} {state}"])
    if state == RunState.LAUNCHED and run.job_id:
        line += f", job {run.job_id}"
    if reason:
        line += f": {reason}"
    total = (items or {}).get("total", 0)
    if total:
        failed = sum((items or {}).get(stage.value, 0) for stage in ITEM_FAILED)
        line += f"; {(items or {}).get('ADDED', 0)} of {total} items added, {failed} failed"
    if mean is not None:
        line += f"; mean score {mean:.3f}"
    return line


def scrubbed(value: Any, api_key: str) -> Any:
    """`value` with the key, and any bearer token, taken out of every string in it."""
    if isinstance(value, str):
        return redact(value, api_key)
    if isinstance(value, dict):
        return {key: scrubbed(item, api_key) for key, item in value.items()}
    if isinstance(value, list):
        return [scrubbed(item, api_key) for item in value]
    return value
