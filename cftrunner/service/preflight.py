"""The checks before a run exists, one request each: the key, the project and its dataset (the
project tree), and the models (the models list). A mistaken command is refused before anything
is stored: a key the API refuses is KeyRejected (exit 77), a project that is not there or has no
dataset is bad input (exit 2). A model the list does not show is only a warning: an alias need
not be listed."""

from __future__ import annotations

import structlog

from cftrunner.driver import Driver
from cftrunner.exceptions import AuthError, InputError, KeyRejected, RejectedError
from cftrunner.payloads import finetuning
from cftrunner.records import Checked, RunSpec
from cftrunner.stages.serving import is_listed

log = structlog.get_logger("cftrunner")


def check(driver: Driver, spec: RunSpec) -> Checked:
    base = driver.settings.base_url
    try:
        project = driver.retrying("checking the project", lambda: driver.client.project(spec.project_id))
    except AuthError as exc:
        raise KeyRejected(f"the API at {base} refused the key ({exc.message}); no run was "
                          "created") from None
    except RejectedError as exc:
        if exc.status_code != 404:
            raise
        raise InputError(f"project {spec.project_id} not found at {base}; no run was "
                         "created") from None
    dataset_id = finetuning.find_dataset_id(project)
    if dataset_id is None:
        raise InputError(f"project {spec.project_id} at {base} has no dataset to add traces to; "
                         "no run was created")
    return Checked(dataset_id, tuple(_unlisted(driver, spec)))


def warn(checked: Checked) -> None:
    """Log each warning of the checks (`preflight`, with its reason)."""
    for warning in checked.warnings:
        log.warning("preflight", reason=warning)


def _unlisted(driver: Driver, spec: RunSpec) -> list[str]:
    base = driver.settings.base_url
    try:
        listed = driver.retrying("listing the models", driver.client.list_models)
    except RejectedError as exc:
        if isinstance(exc, AuthError):
            raise KeyRejected(f"the API at {base} refused the key ({exc.message}); no run was "
                              "created") from None
        return [f"the models list at {base} could not be read ({exc.message})"]
    return [f"{role} {name} is not among the {len(listed)} models {base}/api/v1/models lists "
            "(an alias need not be listed; a misspelt name fails every request)"
            for role, name in (("model", spec.model_alias), ("judge model", spec.judge_model))
            if not is_listed(name, listed)]
