"""The checks before a run exists, one request each: the key, the project and its dataset (the
project tree), and the models (the models list). A mistaken command is refused before anything
is stored: a key the API refuses is KeyRejected (exit 77), a project that is not there or has no
dataset is bad input (exit 2). A model the list does not show is only a warning: an alias need
not be listed."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import structlog

from cftrunner import payloads
from cftrunner.exceptions import AuthError, InputError, KeyRejected, RejectedError
from cftrunner.serving import is_listed

log = structlog.get_logger("cftrunner")

if TYPE_CHECKING:
    from cftrunner.records import RunSpec
    from cftrunner.runner import Runner


@dataclass(frozen=True)
class Checked:
    """What the checks found: the project's dataset, and what is worth a warning."""

    dataset_id: str
    warnings: tuple[str, ...] = ()


def check(r: Runner, spec: RunSpec) -> Checked:
    base = r.settings.base_url
    try:
        project = r.retrying("checking the project", lambda: r.client.project(spec.project_id))
    except AuthError as exc:
        raise KeyRejected(f"the API at {base} refused the key ({exc.message}); no run was "
                          "created") from None
    except RejectedError as exc:
        if exc.status_code != 404:
            raise
        raise InputError(f"project {spec.project_id} not found at {base}; no run was "
                         "created") from None
    dataset_id = payloads.find_dataset_id(project)
    if dataset_id is None:
        raise InputError(f"project {spec.project_id} at {base} has no dataset to add traces to; "
                         "no run was created")
    return Checked(dataset_id, tuple(_unlisted(r, spec)))


def warn(checked: Checked) -> None:
    """Log each warning of the checks (`preflight`, with its reason)."""
    for warning in checked.warnings:
        log.warning("preflight", reason=warning)


def _unlisted(r: Runner, spec: RunSpec) -> list[str]:
    base = r.settings.base_url
    try:
        listed = r.retrying("listing the models", r.client.list_models)
    except RejectedError as exc:
        if isinstance(exc, AuthError):
            raise KeyRejected(f"the API at {base} refused the key ({exc.message}); no run was "
                              "created") from None
        return [f"the models list at {base} could not be read ({exc.message})"]
    return [f"{role} {name} is not among the {len(listed)} models {base}/api/v1/models lists "
            "(an alias need not be listed; a misspelt name fails every request)"
            for role, name in (("model", spec.model_alias), ("judge model", spec.judge_model))
            if not is_listed(name, listed)]
