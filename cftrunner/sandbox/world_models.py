"""The World's operations on models: chat, models loaded for inference, recommendations and jobs."""

from __future__ import annotations

import copy
import dataclasses
from typing import Any

from cftrunner.sandbox import catalog, llm
from cftrunner.sandbox.fields import Invalid, NotFound, Unavailable
from cftrunner.sandbox.jobs import Experiment, Job, Recommendations
from cftrunner.sandbox.records import check_drift
from cftrunner.sandbox.serving import LoadPlan
from cftrunner.sandbox.world_state import WorldState, lookup, new_id


class WorldModels(WorldState):
    """What the world does with models: answers chats, loads models, recommends experiments, trains."""

    def chat(self, model: str, turns: list[tuple[str, str]], *, structured: bool = False) -> str:
        """The assistant's content for a conversation of (role, content) turns."""
        with self._lock:
            if model in self.models.fine_tuned() and not self.serving.running(model, self._clock()):
                raise Unavailable(f"model {model} is not loaded for inference; "
                                  "POST /api/v1/models/up first")
            judge = model in self.settings.judge_models
            self.ledger.chatted(judge)
            quality = self.models.quality(model)
            return llm.answer(turns, judge=judge, structured=structured, quality=quality,
                              drift=self.settings.judge_drift)

    def list_models(self) -> dict[str, Any]:
        """The judges, the base models and every fine-tuned model that finished training."""
        with self._lock:
            return catalog.models(self.settings.judge_models, self.models.fine_tuned())

    def model_up(self, model: str) -> None:
        """Load a fine-tuned model for inference; any other model is always loaded."""
        with self._lock:
            if model in self.models.fine_tuned():
                self.serving.up(model, self._clock())

    def model_down(self, model: str) -> None:
        with self._lock:
            if model in self.models.fine_tuned():
                self.serving.down(model)

    def model_running(self, model: str) -> bool:
        with self._lock:
            return model not in self.models.fine_tuned() or self.serving.running(
                model, self._clock())

    def set_model_loading(self, plan: LoadPlan) -> None:
        """How fine-tuned models asked up from now on load."""
        with self._lock:
            self.serving.plan = plan

    def serving_state(self) -> dict[str, Any]:
        with self._lock:
            return self.serving.to_json(self._clock())

    def set_structured_output(self, enabled: bool) -> None:
        """Whether chat accepts response_format json_schema; refused with a 400 when off."""
        with self._lock:
            self.settings = dataclasses.replace(self.settings, structured_output=enabled)

    def set_judge_drift(self, drift: float) -> None:
        """Add `drift` to every score the judge gives from now on (kept within 0..1)."""
        check_drift(drift)
        with self._lock:
            self.settings = dataclasses.replace(self.settings, judge_drift=float(drift))

    def set_model_quality(self, model: str, quality: float) -> None:
        """The quality in [0, 1] a model answers with, over its base or trained quality."""
        with self._lock:
            self.models.set_quality(model, quality)

    def model_quality(self, model: str) -> float:
        with self._lock:
            return self.models.quality(model)

    def set_training(
        self, *, polls: int | None = None, outcome: str | None = None, gain: float | None = None
    ) -> None:
        """How jobs created from now on train; ValueError (and nothing changed) on a bad value."""
        with self._lock:
            current = self.settings
            self.settings = dataclasses.replace(
                current,
                training_polls=current.training_polls if polls is None else polls,
                training_outcome=current.training_outcome if outcome is None else outcome,
                training_gain=current.training_gain if gain is None else gain,
            )

    def generate_recommendations(self, snapshot_id: str) -> str:
        """Starts (or restarts) the recommender; polls count again from zero."""
        with self._lock:
            lookup(self._snapshots, snapshot_id, "snapshot")
            recs = self._recs.setdefault(snapshot_id, Recommendations(snapshot_id))
            recs.generated += 1
            recs.polls = 0
            self.ledger.recommended(snapshot_id)
            return snapshot_id

    def poll_recommendations(self, snapshot_id: str) -> dict[str, Any]:
        with self._lock:
            recs = self._recs.get(snapshot_id)
            if recs is None:
                raise NotFound(f"no recommendations for snapshot {snapshot_id}")
            recs.polls += 1
            if recs.polls <= self.settings.recs_polls:
                return catalog.processing(snapshot_id)
            return catalog.recommendations(snapshot_id, self.settings.recs_outcome)

    def recommendations(self, snapshot_id: str) -> dict[str, Any]:
        """The finished answer for a generated snapshot, without counting as a poll."""
        with self._lock:
            if snapshot_id not in self._recs:
                raise NotFound(f"no recommendations for snapshot {snapshot_id}")
            return catalog.recommendations(snapshot_id, self.settings.recs_outcome)

    def create_job(self, snapshot_id: str, name: str, experiments: list[dict[str, Any]]) -> str:
        """A job that trains as the settings say now; each model's quality is fixed here."""
        with self._lock:
            snapshot = lookup(self._snapshots, snapshot_id, "snapshot")
            parents = [self._parent_quality(e) for e in experiments]
            plan = self.settings.training()
            made = [
                Experiment(
                    new_id(),
                    n,
                    copy.deepcopy(sent),
                    self.models.reserve(name, n),
                    plan.quality(parent, n),
                    plan.ending(n),
                )
                for n, (sent, parent) in enumerate(zip(experiments, parents, strict=True), 1)
            ]
            job = Job(new_id(), name, snapshot.id, self._now(), made, plan)
            self._jobs[job.id] = job
            self._experiments.update((e.id, (job, e)) for e in made)
            snapshot.job_ids.append(job.id)
            self.ledger.acted("jobs")
            return job.id

    def _parent_quality(self, sent: dict[str, Any]) -> float:
        """The quality of the model an experiment trains from: the model of the experiment it
        re-tunes (Invalid unless that succeeded), else its base model's."""
        source = sent.get("refinetune_from_experiment_id")
        if source is None:
            base = sent.get("base_model_id")
            return self.models.quality(base) if isinstance(base, str) else self.models.base_quality
        if not isinstance(source, str):
            raise Invalid("refinetune_from_experiment_id must be a string")
        job, parent = self._experiments.get(source, (None, None))
        if job is None or parent is None or parent.status(job.stage) != "succeeded":
            raise Invalid(f"refinetune_from_experiment_id {source} is not a succeeded experiment")
        return self.models.quality(parent.model_id)

    def job(self, job_id: str) -> dict[str, Any]:
        """The job as it is; then it advances one step (TrainingPlan.stage)."""
        with self._lock:
            job = lookup(self._jobs, job_id, "job")
            shown = job.to_json()
            job.reads += 1
            if job.reads == job.plan.polls + 1:
                for experiment in job.experiments:
                    if experiment.succeeds:
                        self.models.trained(experiment.model_id, experiment.quality)
            return shown

    def jobs(self) -> list[dict[str, Any]]:
        with self._lock:
            return [j.to_json() for j in self._jobs.values()]

    def sent_experiments(self, job_id: str) -> list[dict[str, Any]]:
        """The experiments exactly as the job's creation request sent them."""
        with self._lock:
            job = lookup(self._jobs, job_id, "job")
            return [copy.deepcopy(e.sent) for e in job.experiments]
