"""What a run's calibration set found of its judge, as status and report show it (text and JSON)."""

from __future__ import annotations

from typing import Any

from cftrunner.records import Run

KEY = "judge err"  # the field's name in `status RUN` and `report RUN`


def judge_error(run: Run) -> float | None:
    """The judge's mean absolute error on the run's calibration set; None when not measured."""
    return (run.calibration or {}).get("mean_absolute_error")


def calibration_to_json(run: Run) -> dict[str, Any] | None:
    """The calibration's figures, its file and the gate's tolerance; None for a run without a
    calibration set. `measured` is false until the run has judged the set."""
    judge = run.judge
    if not judge.calibration:
        return None
    found = run.calibration or {}
    tolerance = run.gate.max_judge_error
    error = found.get("mean_absolute_error")
    return {"source": judge.calibration_source, "triples": len(judge.calibration),
            "measured": run.calibration is not None, "judged": found.get("judged", 0),
            "mean_absolute_error": error, "bias": found.get("bias"),
            "tokens": found.get("tokens", 0), "max_judge_error": tolerance,
            "within_tolerance": None if tolerance is None or error is None
            else error <= tolerance}


def calibration_text(run: Run) -> str | None:
    """One line: the judge's mean absolute error and bias on the calibration set, against the
    tolerance; None for a run without a calibration set."""
    shown = calibration_to_json(run)
    if shown is None:
        return None
    triples = shown["triples"]
    if not shown["measured"]:
        return f"not measured yet ({triples} calibration triples)"
    error = shown["mean_absolute_error"]
    if error is None:
        return f"none of the {triples} calibration triples got a valid score"
    text = (f"{error:.3f} mean absolute error on {shown['judged']} of {triples} calibration "
            f"triples (bias {shown['bias']:+.3f})")
    tolerance = shown["max_judge_error"]
    if tolerance is not None:
        text += f"; tolerance {tolerance:g}" + ("" if shown["within_tolerance"] else ", above it")
    return text


def calibration_lines(run: Run) -> list[tuple[str, str]]:
    """The (key, value) line of `status RUN` and `report RUN`; none without a calibration set."""
    text = calibration_text(run)
    return [] if text is None else [(KEY, text)]
