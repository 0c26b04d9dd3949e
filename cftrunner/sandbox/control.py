"""The sandbox's backend (world, faults, rate limit) and its /_sandbox/ control endpoints, which set them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from cftrunner.sandbox import fields
from cftrunner.sandbox.faults import FaultBook, FaultRule
from cftrunner.sandbox.ratelimit import RateLimit
from cftrunner.sandbox.routes import Reply, error, ok
from cftrunner.sandbox.serving import LoadPlan
from cftrunner.sandbox.training import TrainingPlan
from cftrunner.sandbox.world import World


@dataclass(frozen=True)
class Backend:
    """Everything a request handler needs; the api_key is only ever compared, never shown."""

    world: World
    faults: FaultBook
    api_key: str | None = field(repr=False)
    latency: float = 0.0
    limit: RateLimit = field(default_factory=RateLimit)


def control(backend: Backend, method: str, path: str, body: bytes) -> Reply:
    """The /_sandbox/ endpoints: no auth, no rate limit, no latency, no faults, not counted."""
    world, faults = backend.world, backend.faults
    if (method, path) == ("GET", "/_sandbox/counts"):
        return ok(world.counts())
    if (method, path) == ("GET", "/_sandbox/state"):
        return ok({**world.dump(), "faults": [rule.to_json() for rule in faults.rules()],
                   "rate_limit": backend.limit.to_json(),
                   "structured_output": _structured_output(world)})
    if (method, path) == ("GET", "/_sandbox/training"):
        return ok(world.settings.training().to_json())
    if (method, path) == ("PUT", "/_sandbox/training"):
        try:
            world.set_training(**TrainingPlan.parse_update(fields.decode(body)))
        except (ValueError, fields.Invalid) as exc:
            return error(400, str(exc))
        return ok(world.settings.training().to_json())
    if (method, path) == ("GET", "/_sandbox/model-loading"):
        return ok(world.serving_state())
    if (method, path) == ("PUT", "/_sandbox/model-loading"):
        try:
            world.set_model_loading(LoadPlan.parse(fields.decode(body)))
        except (ValueError, TypeError, fields.Invalid) as exc:
            return error(400, str(exc))
        return ok(world.serving_state())
    if (method, path) == ("GET", "/_sandbox/structured-output"):
        return ok(_structured_output(world))
    if (method, path) == ("PUT", "/_sandbox/structured-output"):
        try:
            world.set_structured_output(_parse_structured_output(fields.decode(body)))
        except (ValueError, fields.Invalid) as exc:
            return error(400, str(exc))
        return ok(_structured_output(world))
    if (method, path) == ("PUT", "/_sandbox/list-lag"):
        try:
            world.set_list_lag(*_parse_list_lag(fields.decode(body)))
        except (ValueError, fields.Invalid) as exc:
            return error(400, str(exc))
        return ok(_list_lag(world))
    if (method, path) == ("GET", "/_sandbox/list-lag"):
        return ok(_list_lag(world))
    if (method, path) == ("GET", "/_sandbox/judge-drift"):
        return ok({"drift": world.settings.judge_drift})
    if (method, path) == ("PUT", "/_sandbox/judge-drift"):
        try:
            world.set_judge_drift(_parse_drift(fields.decode(body)))
        except (ValueError, fields.Invalid) as exc:
            return error(400, str(exc))
        return ok({"drift": world.settings.judge_drift})
    if (method, path) == ("GET", "/_sandbox/rate-limit"):
        return ok(backend.limit.to_json())
    if (method, path) == ("PUT", "/_sandbox/rate-limit"):
        try:
            backend.limit.configure(*RateLimit.parse(fields.decode(body)))
        except (ValueError, fields.Invalid) as exc:
            return error(400, str(exc))
        return ok(backend.limit.to_json())
    if (method, path) == ("GET", "/_sandbox/faults"):
        return ok({"faults": [rule.to_json() for rule in faults.rules()]})
    if (method, path) == ("DELETE", "/_sandbox/faults"):
        return ok({"cleared": faults.clear()})
    if (method, path) == ("POST", "/_sandbox/faults/release"):
        faults.release()
        return ok({"released": True})
    if (method, path) == ("POST", "/_sandbox/faults"):
        try:
            rule = FaultRule.from_json(fields.decode(body))
            faults.add(rule)
        except (ValueError, fields.Invalid) as exc:
            return error(400, str(exc))
        return ok({"added": rule.to_json(), "faults": len(faults.rules())})
    return error(404, f"no such control endpoint: {method} {path}")


def _structured_output(world: World) -> dict[str, bool]:
    return {"enabled": world.settings.structured_output}


def _parse_structured_output(data: object) -> bool:
    """`enabled` from a control request's {"enabled": true or false}; ValueError otherwise."""
    if not isinstance(data, dict) or set(data) != {"enabled"} or not isinstance(data["enabled"], bool):
        raise ValueError('structured output is {"enabled": true or false}')
    return data["enabled"]


def _parse_drift(data: object) -> float:
    """`drift` from a control request's {"drift": 0.3}; ValueError otherwise."""
    if not isinstance(data, dict) or set(data) != {"drift"}:
        raise ValueError('judge drift is {"drift": N}, N from -1 to 1')
    drift = data["drift"]
    if isinstance(drift, bool) or not isinstance(drift, int | float):
        raise ValueError("judge drift must be a number from -1 to 1")
    return float(drift)


def _list_lag(world: World) -> dict[str, Any]:
    return {"seconds": world.settings.list_lag, "uneven": world.settings.list_lag_uneven}


def _parse_list_lag(data: object) -> tuple[float, bool]:
    """(seconds, uneven) from {"seconds": 20, "uneven": false}; ValueError otherwise."""
    if not isinstance(data, dict) or not set(data) <= {"seconds", "uneven"} or "seconds" not in data:
        raise ValueError('list lag is {"seconds": N, "uneven": true or false}')
    seconds, uneven = data["seconds"], data.get("uneven", False)
    if isinstance(seconds, bool) or not isinstance(seconds, int | float) or seconds < 0:
        raise ValueError("seconds must be a number, at least 0")
    if not isinstance(uneven, bool):
        raise ValueError("uneven must be true or false")
    return float(seconds), uneven
