"""The judge's calibration set: the file read and checked, the error computed, the gate's verdict on
it, the cycle keys, what status and report say of it, and the sandbox judge's drift."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from cftrunner.calibration import read_calibration, summary, with_calibration
from cftrunner.config.resolution import resolve
from cftrunner.config.run_options import GateConfig, JudgeConfig
from cftrunner.exceptions import InputError
from cftrunner.gate import Facts, evaluate
from cftrunner.records import Run
from cftrunner.sandbox import llm
from cftrunner.sandbox.records import WorldSettings
from cftrunner.views.calibration import calibration_text, calibration_to_json, judge_error
from tests.conftest import make_run

FACTS = Facts(traces_added=40, below_threshold=12, mean_score=0.71, tokens_used=90_000,
              items_over_budget=0)
TRIPLES = ({"prompt": "Is 2 prime?", "answer": "yes", "expected": 1.0},
           {"prompt": "Is 9 prime?", "answer": "yes", "expected": 0.0},
           {"prompt": "Is 7 prime?", "answer": "probably", "expected": 0.5})


def _write(tmp_path: Path, text: str, name: str = "calibration.jsonl") -> str:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return str(path)


# the file


def test_a_jsonl_file_gives_its_triples_in_order_and_ignores_other_keys(tmp_path: Path) -> None:
    lines = [json.dumps({**t, "id": n}) for n, t in enumerate(TRIPLES)]
    path = _write(tmp_path, "\n".join([lines[0], "", *lines[1:]]) + "\n")
    assert read_calibration(path) == TRIPLES


def test_a_json_array_is_read_as_well_and_integers_become_floats(tmp_path: Path) -> None:
    path = _write(tmp_path, json.dumps([{"prompt": "p", "answer": "", "expected": 1}]),
                  "calibration.json")
    assert read_calibration(path) == ({"prompt": "p", "answer": "", "expected": 1.0},)


@pytest.mark.parametrize(("text", "message"), [
    ('{"prompt": "p", "answer": "a", "expected": 0.5}\n{"prompt": "q"',
     "line 2: not valid JSON (Expecting ',' delimiter at column 15)"),
    ('"p"\n', 'line 1: not a JSON object with "prompt", "answer" and "expected"'),
    ('{"prompt": "p", "answer": "a"}\n', 'line 1: no "expected"'),
    ('{"answer": "a"}\n', 'line 1: no "prompt", "expected"'),
    ('{"prompt": " ", "answer": "a", "expected": 0.5}\n',
     'line 1: "prompt" must be a non-blank string'),
    ('{"prompt": "p", "answer": null, "expected": 0.5}\n', 'line 1: "answer" must be a string'),
    ('\n\n{"prompt": "p", "answer": "a", "expected": 1.5}\n',
     'line 3: "expected" must be a number from 0 to 1, not 1.5'),
    ('{"prompt": "p", "answer": "a", "expected": "0.8"}\n',
     'line 1: "expected" must be a number from 0 to 1, not "0.8"'),
    ('{"prompt": "p", "answer": "a", "expected": true}\n',
     'line 1: "expected" must be a number from 0 to 1, not true'),
    ('[{"prompt": "p", "answer": "a", "expected": 0.5}, {"prompt": "p", "answer": "a"}]',
     'entry 2: no "expected"'),
])
def test_a_wrong_triple_is_one_line_naming_the_file_and_where(tmp_path: Path, text: str,
                                                             message: str) -> None:
    path = _write(tmp_path, text)
    with pytest.raises(InputError) as raised:
        read_calibration(path)
    assert raised.value.message == f"{path}: {message}"


@pytest.mark.parametrize(("make", "message"), [
    (lambda p: p.write_text("\n\n"), "holds no triples"),
    (lambda p: p.write_text("[]"), "holds no triples"),
    (lambda p: p.write_text('{"prompts": []}'), 'no "prompt", "answer", "expected"'),
    (lambda p: p.write_text("[1, 2"), "is not valid JSON"),
    (lambda p: p.write_bytes(b'{"prompt": "\xff"}'), "is not UTF-8 text"),
    (lambda p: p.mkdir(), "is a directory"),
    (lambda p: None, "cannot read the calibration file"),
])
def test_a_file_that_cannot_be_used_is_one_line(tmp_path: Path, make: object,
                                                message: str) -> None:
    path = tmp_path / "calibration.jsonl"
    make(path)  # type: ignore[operator]
    with pytest.raises(InputError) as raised:
        read_calibration(str(path))
    assert message in raised.value.message and "\n" not in raised.value.message


# the error


def test_the_error_is_the_mean_absolute_difference_and_the_bias_keeps_its_sign() -> None:
    judged: list[dict[str, Any]] = [{"position": 0, "score": 0.7, "tokens": 10},  # 0.3 too low
              {"position": 1, "score": 0.2, "tokens": 12},  # 0.2 too high
              {"position": 2, "score": 0.6, "tokens": None}]  # 0.1 too high
    found = summary(TRIPLES, judged)
    assert found == {"triples": 3, "judged": 3, "mean_absolute_error": 0.2, "bias": 0.0,
                     "tokens": 22}


def test_triples_without_a_score_are_left_out_of_the_error_but_counted() -> None:
    judged: list[dict[str, Any]] = [{"position": 0, "score": None, "tokens": 5},
                                    {"position": 2, "score": 0.9, "tokens": 5}]
    found = summary(TRIPLES, judged)
    assert (found["judged"], found["mean_absolute_error"], found["bias"]) == (1, 0.4, 0.4)
    nothing = summary(TRIPLES, [{"position": 0, "score": None, "tokens": 0}])
    assert (nothing["judged"], nothing["mean_absolute_error"], nothing["bias"]) == (0, None, None)


# the gate


def _calibrated(error: float | None, judged: int = 3) -> Facts:
    run = _run(calibration={"triples": 3, "judged": judged, "mean_absolute_error": error})
    return with_calibration(FACTS, run)


def _run(calibration: dict[str, object] | None = None, tolerance: float | None = 0.15) -> Run:
    from dataclasses import replace
    return replace(make_run(), judge_config=JudgeConfig(calibration=TRIPLES,
                                                        calibration_source="c.jsonl").to_json(),
                   gate_config=GateConfig(max_judge_error=tolerance).to_json(),
                   calibration=calibration)


def test_an_error_above_the_tolerance_stops_the_cycle_with_the_reason() -> None:
    verdict = evaluate(GateConfig(max_judge_error=0.15), _calibrated(0.31))
    assert not verdict.passed
    assert verdict.reasons == ("the judge's mean absolute error on the calibration set is 0.31, "
                               "above 0.15",)
    assert verdict.to_json()["judge_error"] == 0.31


def test_an_error_at_the_tolerance_passes_and_without_one_any_error_passes() -> None:
    assert evaluate(GateConfig(max_judge_error=0.15), _calibrated(0.15)).passed
    assert evaluate(GateConfig(), _calibrated(0.9)).passed


def test_a_judge_that_scored_none_of_the_set_does_not_pass_a_tolerance() -> None:
    verdict = evaluate(GateConfig(max_judge_error=0.15), _calibrated(None, judged=0))
    assert verdict.reasons == ("the judge scored none of the 3 calibration triples",)
    # A run with a set whose result was never stored counts the same.
    unmeasured = with_calibration(FACTS, _run(calibration=None))
    assert not evaluate(GateConfig(max_judge_error=0.15), unmeasured).passed


def test_a_run_without_a_calibration_set_leaves_the_facts_alone() -> None:
    assert with_calibration(FACTS, make_run()) == FACTS
    assert evaluate(GateConfig(max_judge_error=0.01), FACTS).passed


# the run's options and the cycle keys


def test_the_triples_are_stored_with_the_judge_config_and_read_back() -> None:
    config = JudgeConfig(calibration=TRIPLES, calibration_source="/x/c.jsonl")
    assert JudgeConfig.from_json(json.loads(json.dumps(config.to_json()))) == config
    assert JudgeConfig.from_json({}).calibration == ()
    assert GateConfig.from_json({"max_judge_error": 0.2}).max_judge_error == 0.2


def test_the_cycle_keys_read_the_file_relative_to_the_config_file(tmp_path: Path) -> None:
    _write(tmp_path, "".join(json.dumps(t) + "\n" for t in TRIPLES))
    (tmp_path / "cftrunner.toml").write_text(
        '[judge]\ncalibration = "calibration.jsonl"\n[gate]\nmax_judge_error = 0.15\n')
    cycle = resolve({}, {}, cwd=tmp_path).cycle
    judge = cycle.judge()
    assert judge.calibration == TRIPLES
    assert judge.calibration_source == str(tmp_path / "calibration.jsonl")
    assert cycle.gate().max_judge_error == 0.15


def test_a_tolerance_without_a_calibration_set_is_refused(tmp_path: Path) -> None:
    (tmp_path / "cftrunner.toml").write_text("[gate]\nmax_judge_error = 0.15\n")
    with pytest.raises(InputError, match=re.escape(
            "gate.max_judge_error needs judge.calibration")):
        resolve({}, {}, cwd=tmp_path).cycle.judge()


def test_a_tolerance_outside_0_to_1_is_refused(tmp_path: Path) -> None:
    (tmp_path / "cftrunner.toml").write_text("[gate]\nmax_judge_error = 2\n")
    with pytest.raises(InputError, match="gate.max_judge_error must be a number from 0 to 1"):
        resolve({}, {}, cwd=tmp_path)


# what people see


def test_status_and_report_say_what_the_set_found_against_the_tolerance() -> None:
    assert calibration_to_json(make_run()) is None and calibration_text(make_run()) is None
    assert calibration_text(_run()) == "not measured yet (3 calibration triples)"
    over = _run({"triples": 3, "judged": 3, "mean_absolute_error": 0.31, "bias": 0.29,
                 "tokens": 400})
    assert calibration_text(over) == ("0.310 mean absolute error on 3 of 3 calibration triples "
                                      "(bias +0.290); tolerance 0.15, above it")
    shown = calibration_to_json(over)
    assert shown is not None and shown["within_tolerance"] is False
    assert shown["source"] == "c.jsonl" and judge_error(over) == 0.31
    within = _run({"triples": 3, "judged": 2, "mean_absolute_error": 0.05, "bias": -0.05},
                  tolerance=None)
    assert calibration_text(within) == ("0.050 mean absolute error on 2 of 3 calibration "
                                        "triples (bias -0.050)")
    none = _run({"triples": 3, "judged": 0, "mean_absolute_error": None, "bias": None})
    assert calibration_text(none) == "none of the 3 calibration triples got a valid score"


# the sandbox's judge


def test_the_sandbox_judge_drifts_by_the_setting_within_0_and_1() -> None:
    prompt = "Classify message 1: 'how do I fix my bike chain?'"
    answer = llm.wrong_answer(prompt)
    template = f"<prompt>\n{prompt}\n</prompt>\n<answer>\n{answer}\n</answer>"
    honest = llm.expected_score(prompt, answer)
    assert llm.judgment(template)["score"] == honest
    assert llm.judgment(template, 0.3)["score"] == round(honest + 0.3, 2)
    assert llm.judgment(template, -1.0)["score"] == 0.0
    assert llm.drifted(0.9, 0.3) == 1.0
    with pytest.raises(ValueError, match="judge drift must be a number from -1 to 1"):
        WorldSettings(judge_drift=1.5)
