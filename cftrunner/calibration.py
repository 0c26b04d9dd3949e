"""The judge's calibration set: answers whose right score is known, read from a file and checked, and
how far the judge's scores of them fall from it (the mean absolute error the gate holds it to).

A calibration file holds {"prompt", "answer", "expected"} objects, `expected` the score a good
judge gives the answer, from 0 to 1: one object a line (JSONL), or a JSON array of them. Other keys
(an id, a note) are ignored."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from cftrunner.exceptions import InputError
from cftrunner.gate import Facts
from cftrunner.records import Run

FIELDS = ("prompt", "answer", "expected")


def read_calibration(path: str) -> tuple[dict[str, Any], ...]:
    """Every triple of the calibration file at `path`, checked; InputError, naming the file and
    the line (or entry), for the first that is wrong, or for a file without any."""
    try:
        text = Path(path).read_bytes().decode("utf-8-sig")
    except IsADirectoryError:
        raise InputError(f"the calibration file {path} is a directory") from None
    except OSError as exc:
        raise InputError(f"cannot read the calibration file {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise InputError(f"the calibration file {path} is not UTF-8 text") from None
    triples = tuple(_triple(path, where, value) for where, value in _values(path, text))
    if not triples:
        raise InputError(f"the calibration file {path} holds no triples (one JSON object a line, "
                         'each with "prompt", "answer" and "expected")')
    return triples


def _values(path: str, text: str) -> Iterator[tuple[str, object]]:
    """(where, value) of each entry: a JSON array's elements, else each non-blank line's."""
    if text.lstrip().startswith("["):
        try:
            document = json.loads(text)
        except ValueError as exc:
            raise InputError(f"the calibration file {path} is not valid JSON ({_why(exc)})") from None
        if not isinstance(document, list):
            raise InputError(f"the calibration file {path} is not a JSON array")
        yield from ((f"entry {n}", value) for n, value in enumerate(document, 1))
        return
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            yield f"line {number}", json.loads(line)
        except ValueError as exc:
            raise InputError(f"{path}: line {number}: not valid JSON ({_why(exc)})") from None


def _why(exc: ValueError) -> str:
    return (f"{exc.msg} at column {exc.colno}" if isinstance(exc, json.JSONDecodeError)
            else str(exc))


def _triple(path: str, where: str, value: object) -> dict[str, Any]:
    label = f"{path}: {where}:"
    if not isinstance(value, dict):
        raise InputError(f'{label} not a JSON object with "prompt", "answer" and "expected"')
    if missing := [name for name in FIELDS if name not in value]:
        raise InputError(f"{label} no " + ", ".join(f'"{name}"' for name in missing))
    prompt, answer, expected = (value[name] for name in FIELDS)
    if not isinstance(prompt, str) or not prompt.strip():
        raise InputError(f'{label} "prompt" must be a non-blank string')
    if not isinstance(answer, str):
        raise InputError(f'{label} "answer" must be a string')
    if isinstance(expected, bool) or not isinstance(expected, int | float) \
            or not math.isfinite(expected) or not 0 <= expected <= 1:
        raise InputError(f'{label} "expected" must be a number from 0 to 1, not '
                         f"{json.dumps(expected)}")
    return {"prompt": prompt, "answer": answer, "expected": float(expected)}


def summary(triples: Sequence[Mapping[str, Any]],
            judged: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """What the judge's scores of the triples (`judged`: stored rows with "position", "score"
    and "tokens") came to: how many it scored, their mean absolute error against the expected
    scores and their mean signed error ("bias": above 0, the judge scores too high); the errors
    are None when it scored none."""
    scores = {row["position"]: row["score"] for row in judged if row["score"] is not None}
    errors = [scores[n] - float(t["expected"]) for n, t in enumerate(triples) if n in scores]
    return {"triples": len(triples), "judged": len(errors),
            "mean_absolute_error": _mean([abs(e) for e in errors]), "bias": _mean(errors),
            "tokens": sum(int(row.get("tokens") or 0) for row in judged)}


def _mean(values: Sequence[float]) -> float | None:
    return round(math.fsum(values) / len(values), 6) if values else None


def with_calibration(facts: Facts, run: Run) -> Facts:
    """The gate's facts with what the run's calibration found. A run with a calibration set but
    no result stored counts as one whose judge scored none of it."""
    triples = len(run.judge.calibration)
    if not triples:
        return facts
    found = run.calibration or {}
    return replace(facts, calibration_triples=triples,
                   calibration_judged=int(found.get("judged") or 0),
                   judge_error=found.get("mean_absolute_error"))
