"""The Prem API's routes: which path is which route name, and what each does to the World."""

from __future__ import annotations

import json
import math
import re
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from cftrunner.sandbox import chat, fields
from cftrunner.sandbox.catalog import TRAINING_TYPES
from cftrunner.sandbox.fields import Invalid, NotFound, Unavailable, WorldError
from cftrunner.sandbox.records import TraceDraft, TraceQuery
from cftrunner.sandbox.world import World

FEEDBACK_MAX = 2048


@dataclass(frozen=True)
class Reply:
    status: int
    payload: Any
    headers: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Call:
    """One routed request: path parameters, query (last value of each key) and raw body."""

    params: dict[str, str]
    query: dict[str, str] = field(default_factory=dict)
    body: bytes = b""

    def json(self) -> Any:
        return fields.decode(self.body)


Handler = Callable[[World, Call], Reply]


@dataclass(frozen=True)
class Route:
    method: str
    pattern: re.Pattern[str]
    name: str
    handler: Handler


def error(status: int, message: str) -> Reply:
    return Reply(status, {"error": message})


def ok(payload: Any) -> Reply:
    return Reply(200, payload)


def _project(world: World, call: Call) -> Reply:
    return ok(world.project_tree(call.params["id"]))


def _chat(world: World, call: Call) -> Reply:
    return ok(chat.complete(world, call.json()))


def is_judge_call(body: bytes, judge_models: tuple[str, ...]) -> bool:
    try:
        payload = json.loads(body)
    except ValueError:
        return False
    return isinstance(payload, dict) and payload.get("model") in judge_models


def _draft(data: Any) -> TraceDraft:
    """Either spelling of each key: the tutorial's snake_case and the reference's camelCase."""
    item = fields.as_object(data, "each trace")
    return TraceDraft(
        project_id=fields.text(item, "projectId", "project_id"),
        model_id=fields.text(item, "modelId", "model_id"),
        input=fields.text(item, "input"),
        output=fields.text(item, "output"),
        score=fields.number(item, "score", low=0.0, high=1.0),
        feedback=fields.optional_text(item, "feedback", max_len=FEEDBACK_MAX) or "",
    )


def _trace_create(world: World, call: Call) -> Reply:
    payload = call.json()
    if isinstance(payload, list):
        if not payload:
            raise Invalid("the list of traces is empty")
        created = world.create_traces([_draft(item) for item in payload])
        return ok({"results": [{"traceId": t["id"], "success": True} for t in created]})
    return ok(world.create_traces([_draft(payload)])[0])


def _trace_list(world: World, call: Call) -> Reply:
    page = call.query.get("page", "1")
    if not re.fullmatch("[1-9][0-9]*", page):
        raise Invalid("page must be a positive integer")
    sort_by = call.query.get("sortBy", "createdAt")
    sort_order = call.query.get("sortOrder", "desc")
    if sort_by not in ("createdAt", "score") or sort_order not in ("asc", "desc"):
        raise Invalid("sortBy must be createdAt or score, sortOrder asc or desc")
    models = frozenset(m for m in call.query.get("modelIds", "").split(",") if m)
    query = TraceQuery(int(page), call.query.get("projectId") or None, models, sort_by, sort_order)
    return ok(world.list_traces(query))


def _trace_update(world: World, call: Call) -> Reply:
    body = fields.as_object(call.json())
    return ok(
        world.update_trace(
            call.params["id"],
            score=fields.optional_number(body, "score", low=0.0, high=1.0),
            feedback=fields.optional_text(body, "feedback", max_len=FEEDBACK_MAX),
            project_id=fields.optional_text(body, "projectId"),
        )
    )


def _trace_delete(world: World, call: Call) -> Reply:
    world.delete_trace(call.params["id"])
    return ok({"success": True})


def _add_to_dataset(world: World, call: Call) -> Reply:
    return ok(world.add_to_dataset(call.params["id"]))


def _dataset(world: World, call: Call) -> Reply:
    return ok(world.dataset(call.params["id"]))


def _snapshot_create(world: World, call: Call) -> Reply:
    body = fields.as_object(call.json())
    dataset_id = fields.text(body, "dataset_id")
    split = fields.integer(body, "split_percentage", low=1, high=99, default=80)
    return ok({"snapshot_id": world.create_snapshot(dataset_id, split)})


def _recs_generate(world: World, call: Call) -> Reply:
    body = fields.as_object(call.json())
    return ok({"snapshot_id": world.generate_recommendations(fields.text(body, "snapshot_id"))})


def _recs_get(world: World, call: Call) -> Reply:
    return ok(world.poll_recommendations(call.params["id"]))


def _finetune_create(world: World, call: Call) -> Reply:
    body = fields.as_object(call.json())
    snapshot_id = fields.text(body, "snapshot_id")
    name = fields.non_empty_text(body, "name")
    experiments = [_experiment(e) for e in fields.object_list(body, "experiments")]
    return ok({"job_id": world.create_job(snapshot_id, name, experiments)})


def _experiment(item: dict[str, Any]) -> dict[str, Any]:
    """One experiment of a job to create, with the fields the SDK requires; other keys are kept."""
    fields.non_empty_text(item, "base_model_id")
    for name in ("batch_size", "n_epochs"):
        if fields.optional_integer(item, name, low=1) is None:
            raise Invalid(f"each experiment needs {name}")
    fields.number(item, "learning_rate_multiplier", low=0.0, high=math.inf)
    if item.get("training_type") not in TRAINING_TYPES:
        raise Invalid(f"each experiment needs training_type, one of {', '.join(TRAINING_TYPES)}")
    fields.optional_text(item, "refinetune_from_experiment_id")
    return item


def _finetune_get(world: World, call: Call) -> Reply:
    return ok(world.job(call.params["id"]))


def _models(world: World, call: Call) -> Reply:
    return ok(world.list_models())


def _models_running(world: World, call: Call) -> Reply:
    model = call.query.get("model")
    if not model:
        raise Invalid("the model query parameter is required")
    return ok({"status": world.model_running(model)})


def _models_up(world: World, call: Call) -> Reply:
    model = fields.non_empty_text(fields.as_object(call.json()), "model")
    world.model_up(model)
    return ok({"message": f"model {model} is loading"})


def _models_down(world: World, call: Call) -> Reply:
    model = fields.non_empty_text(fields.as_object(call.json()), "model")
    world.model_down(model)
    return ok({"message": f"model {model} is unloaded"})


def _route(method: str, path: str, name: str, handler: Handler) -> Route:
    pattern = re.compile("^" + path.replace("{id}", "(?P<id>[^/]+)") + "$")
    return Route(method, pattern, name, handler)


ROUTES = (
    _route("GET", "/api/v1/public/projects/{id}", "project", _project),
    _route("POST", "/api/v1/chat/completions", "chat", _chat),
    _route("POST", "/api/v1/traces", "trace_create", _trace_create),
    _route("GET", "/api/v1/traces", "trace_list", _trace_list),
    _route("PUT", "/api/v1/traces/{id}", "trace_update", _trace_update),
    _route("DELETE", "/api/v1/traces/{id}", "trace_delete", _trace_delete),
    _route("POST", "/api/v1/traces/{id}/addToDataset", "add_to_dataset", _add_to_dataset),
    _route("GET", "/api/v1/public/datasets/{id}", "dataset", _dataset),
    _route("POST", "/api/v1/public/snapshots/create", "snapshot_create", _snapshot_create),
    _route("POST", "/api/v1/public/recommendations/generate", "recs_generate", _recs_generate),
    _route("GET", "/api/v1/public/recommendations/{id}", "recs_get", _recs_get),
    _route("POST", "/api/v1/public/finetuning/create", "finetune_create", _finetune_create),
    _route("GET", "/api/v1/public/finetuning/{id}", "finetune_get", _finetune_get),
    _route("GET", "/api/v1/models", "models", _models),
    _route("GET", "/api/v1/models/running", "models_running", _models_running),
    _route("POST", "/api/v1/models/up", "models_up", _models_up),
    _route("POST", "/api/v1/models/down", "models_down", _models_down),
)
ROUTE_NAMES = frozenset(route.name for route in ROUTES)


def resolve(method: str, path: str) -> tuple[Route, dict[str, str]] | Reply:
    """The route and its path parameters, or the 404 / 405 answer."""
    allowed = []
    for route in ROUTES:
        found = route.pattern.match(path)
        if found is None:
            continue
        if route.method == method:
            return route, found.groupdict()
        allowed.append(route.method)
    if allowed:
        reply = error(405, f"method {method} not allowed on {path}")
        return Reply(reply.status, reply.payload, (("Allow", ", ".join(allowed)),))
    return error(404, f"no such path: {path}")


def dispatch(route: Route, world: World, call: Call) -> Reply:
    try:
        return route.handler(world, call)
    except NotFound as exc:
        return error(404, str(exc))
    except Unavailable as exc:
        return error(503, str(exc))
    except WorldError as exc:
        return error(400, str(exc))
    except Exception:
        # A sandbox bug must not look like a dropped connection to the client under test.
        traceback.print_exc()
        return error(500, "internal sandbox error")
