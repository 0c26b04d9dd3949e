"""The sandbox's fixed model list and the experiments its recommender proposes."""

from __future__ import annotations

from typing import Any

BASE_MODELS = (
    "qwen2.5-7b-instruct",
    "llama-3.2-3b-instruct",
    "qwen2.5-1.5b-instruct",
    "llama-3.1-8b-instruct",
)
MODELS_CREATED = 1_735_689_600  # 2025-01-01T00:00:00Z, fixed so answers are reproducible

RECS_OUTCOMES = ("completed", "failed", "none_recommended")
TRAINING_TYPES = ("full", "lora", "qlora")

# The first two share a recipe on two base models, as a recommender may propose: re-tuned from one
# model, both would be the same experiment.
_EXPERIMENTS: tuple[dict[str, Any], ...] = (
    {
        "base_model_id": BASE_MODELS[0],
        "batch_size": 4,
        "learning_rate_multiplier": 1.0,
        "n_epochs": 3,
        "training_type": "lora",
        "recommended": True,
        "reason_for_recommendation": "Strong instruction follower; LoRA fits the dataset size.",
    },
    {
        "base_model_id": BASE_MODELS[1],
        "batch_size": 4,
        "learning_rate_multiplier": 1.0,
        "n_epochs": 3,
        "training_type": "lora",
        "recommended": True,
        "reason_for_recommendation": "Small and fast; good for a short classification task.",
    },
    {
        "base_model_id": BASE_MODELS[2],
        "batch_size": 8,
        "learning_rate_multiplier": 2.0,
        "n_epochs": 4,
        "training_type": "qlora",
        "recommended": False,
        "reason_for_recommendation": "Cheapest option, but likely to underfit the categories.",
    },
    {
        "base_model_id": BASE_MODELS[3],
        "batch_size": 2,
        "learning_rate_multiplier": 0.5,
        "n_epochs": 1,
        "training_type": "full",
        "recommended": True,
        "reason_for_recommendation": "Highest capacity; full fine-tuning for best accuracy.",
    },
)


def models(judge_models: tuple[str, ...], fine_tuned: tuple[str, ...] = ()) -> dict[str, Any]:
    """The judges, the base models, then the fine-tuned models."""
    return {
        "object": "list",
        "data": [
            {"id": model, "object": "model", "created": MODELS_CREATED, "owned_by": "prem"}
            for model in (*judge_models, *BASE_MODELS, *fine_tuned)
        ],
    }


def recommendations(snapshot_id: str, outcome: str) -> dict[str, Any]:
    """The finished answer for one of RECS_OUTCOMES."""
    if outcome == "failed":
        return _answer(snapshot_id, "failed", [])
    experiments = [dict(experiment) for experiment in _EXPERIMENTS]
    if outcome == "none_recommended":
        for experiment in experiments:
            experiment["recommended"] = False
    return _answer(snapshot_id, "completed", experiments)


def processing(snapshot_id: str) -> dict[str, Any]:
    return _answer(snapshot_id, "processing", [])


def older(answer: dict[str, Any]) -> dict[str, Any]:
    """`answer` in the API's older shape: each experiment's `lora` flag (true for lora and qlora)
    instead of its `training_type`."""
    experiments = []
    for experiment in answer["recommended_experiments"]:
        shown = {k: v for k, v in experiment.items() if k != "training_type"}
        shown["lora"] = experiment["training_type"] != "full"
        experiments.append(shown)
    return {**answer, "recommended_experiments": experiments}


def _answer(snapshot_id: str, status: str, experiments: list[dict[str, Any]]) -> dict[str, Any]:
    """The answer, with a recommended model for each base model an experiment proposes."""
    by_model: dict[str, list[dict[str, Any]]] = {}
    for experiment in experiments:
        by_model.setdefault(experiment["base_model_id"], []).append(experiment)
    return {
        "snapshot_id": snapshot_id,
        "status": status,
        "recommended_experiments": experiments,
        "recommended_models": [_model(base, proposed) for base, proposed in by_model.items()],
    }


def _model(base_model_id: str, proposed: list[dict[str, Any]]) -> dict[str, Any]:
    model: dict[str, Any] = {
        "base_model_id": base_model_id,
        "recommended": any(e["recommended"] for e in proposed),
        "reason_for_recommendation": proposed[0]["reason_for_recommendation"],
    }
    for experiment in proposed:
        kind = "full" if experiment["training_type"] == "full" else "lora"
        model[f"{kind}_hyperparameters"] = {
            key: experiment[key] for key in ("batch_size", "learning_rate_multiplier", "n_epochs")
        }
    return model
