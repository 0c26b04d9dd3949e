"""Which files a prompt source names, and which of their prompts a cycle's next run takes."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from cftrunner.exceptions import PromptsError
from cftrunner.prompt_source import (
    Rules,
    choose,
    describe,
    every_prompt,
    files_of,
    holdout_places,
    scan,
)
from cftrunner.prompts import Prompt, prompt_digest

NOW = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)
DEFAULT_RULES = Rules()


def jsonl(path: Path, *prompts: str | tuple[str, str], age: int = 0) -> Path:
    """A JSONL file of prompts (a (prompt, tag) pair is an object with a tag), `age` seconds old."""
    lines = [json.dumps({"prompt": p[0], "tag": p[1]} if isinstance(p, tuple) else p)
             for p in prompts]
    path.write_text("\n".join(lines) + "\n")
    stamp = NOW.timestamp() - age
    os.utime(path, (stamp, stamp))
    return path


def texts(prompts: object) -> list[str]:
    return [p.text for p in prompts]  # type: ignore[attr-defined]


def taken(source: Path | str, used: dict[str, datetime] | None = None,
          rules: Rules = DEFAULT_RULES, **options: object) -> list[str]:
    choice = choose(scan(str(source)), used or {}, NOW, rules, **options)  # type: ignore[arg-type]
    return texts(choice.stream())


# -- the files --------------------------------------------------------------------------------


def test_a_folder_is_its_json_and_jsonl_files_oldest_first_hidden_and_others_aside(
        tmp_path: Path) -> None:
    jsonl(tmp_path / "b.jsonl", "b", age=100)
    jsonl(tmp_path / "a.jsonl", "a", age=10)
    (tmp_path / "c.json").write_text(json.dumps(["c"]))
    os.utime(tmp_path / "c.json", (NOW.timestamp() - 50, NOW.timestamp() - 50))
    jsonl(tmp_path / ".hidden.jsonl", "hidden", age=200)
    jsonl(tmp_path / "notes.txt", "text", age=300)
    jsonl(tmp_path / "drop.jsonl.part", "partial", age=300)
    (tmp_path / "sub.jsonl").mkdir()
    assert [p.name for p in files_of(str(tmp_path))] == ["b.jsonl", "c.json", "a.jsonl"]


def test_files_of_one_age_are_taken_by_name(tmp_path: Path) -> None:
    for name in ("2.jsonl", "10.jsonl", "1.jsonl"):
        jsonl(tmp_path / name, name, age=5)
    assert [p.name for p in files_of(str(tmp_path))] == ["1.jsonl", "10.jsonl", "2.jsonl"]


def test_a_glob_takes_the_files_it_matches(tmp_path: Path) -> None:
    jsonl(tmp_path / "a.jsonl", "a", age=2)
    jsonl(tmp_path / "b.jsonl", "b", age=1)
    (tmp_path / "c.json").write_text(json.dumps(["c"]))
    assert [p.name for p in files_of(str(tmp_path / "*.jsonl"))] == ["a.jsonl", "b.jsonl"]


def test_an_empty_folder_or_a_glob_matching_nothing_has_no_files(tmp_path: Path) -> None:
    assert files_of(str(tmp_path)) == ()
    assert files_of(str(tmp_path / "*.jsonl")) == ()
    assert scan(str(tmp_path)).prompts == ()


def test_a_glob_in_a_folder_that_does_not_exist_is_refused(tmp_path: Path) -> None:
    with pytest.raises(PromptsError, match="no such folder .*missing"):
        files_of(str(tmp_path / "missing" / "*.jsonl"))


def test_a_missing_file_is_refused_when_read(tmp_path: Path) -> None:
    with pytest.raises(PromptsError, match="no such file"):
        scan(str(tmp_path / "nope.json"))


def test_a_bad_prompt_in_any_file_of_a_folder_is_refused_naming_the_file(tmp_path: Path) -> None:
    jsonl(tmp_path / "good.jsonl", "fine", age=2)
    (tmp_path / "bad.jsonl").write_text('"ok"\n42\n')
    with pytest.raises(PromptsError, match=r"bad\.jsonl: line 2: prompt 1 is a number"):
        scan(str(tmp_path))


def test_tags_come_from_a_tag_or_a_category_field(tmp_path: Path) -> None:
    path = tmp_path / "p.jsonl"
    path.write_text('{"prompt": "a", "tag": " billing "}\n{"prompt": "b", "category": "refunds"}\n'
                    '"c"\n')
    assert [s.tag for s in scan(str(path)).prompts] == ["billing", "refunds", None]
    path.write_text('{"prompt": "a", "tag": 3}\n')
    with pytest.raises(PromptsError, match='line 1: prompt 0 is an object whose "tag" is not'):
        scan(str(path))


def test_a_prompt_in_an_earlier_file_is_left_out_of_a_later_one(tmp_path: Path) -> None:
    jsonl(tmp_path / "a.jsonl", "one", "two", age=2)
    jsonl(tmp_path / "b.jsonl", "two", "three", age=1)
    scanned = scan(str(tmp_path))
    assert scanned.repeated == 1
    assert taken(tmp_path) == ["one", "two", "three"]


# -- what a run takes -------------------------------------------------------------------------


def test_prompts_an_earlier_run_used_are_not_taken_again(tmp_path: Path) -> None:
    path = jsonl(tmp_path / "p.jsonl", "a", "b", "c")
    used = {prompt_digest("b"): NOW - timedelta(days=400)}
    assert taken(path, used) == ["a", "c"]
    choice = choose(scan(str(path)), used, NOW, Rules())
    assert (choice.unused, choice.used, choice.remaining) == (2, 1, 0)


def test_reuse_after_makes_a_prompt_used_long_enough_ago_new_again(tmp_path: Path) -> None:
    path = jsonl(tmp_path / "p.jsonl", "old", "recent", "never")
    used = {prompt_digest("old"): NOW - timedelta(days=10),
            prompt_digest("recent"): NOW - timedelta(days=2)}
    assert taken(path, used, Rules(reuse_after=timedelta(days=7).total_seconds())) == [
        "old", "never"]
    choice = choose(scan(str(path)), used, NOW, Rules(reuse_after=7 * 86400))
    assert choice.summary()["new"] == 1 and choice.summary()["reused"] == 1
    assert taken(path, used, Rules(reuse_after=0)) == ["old", "recent", "never"]


def test_prompts_per_cycle_takes_the_oldest_files_first(tmp_path: Path) -> None:
    jsonl(tmp_path / "new.jsonl", "n1", "n2", age=1)
    jsonl(tmp_path / "old.jsonl", "o1", "o2", age=100)
    choice = choose(scan(str(tmp_path)), {}, NOW, Rules(per_cycle=3))
    assert texts(choice.stream()) == ["o1", "o2", "n1"]
    assert choice.remaining == 1


def test_weak_takes_the_prompts_of_the_lowest_scoring_tags_first(tmp_path: Path) -> None:
    path = jsonl(tmp_path / "p.jsonl", ("s1", "strong"), ("w1", "weak"), "plain",
                 ("u1", "unknown"), ("w2", "weak"), ("s2", "strong"))
    means = {"strong": 0.9, "weak": 0.2}
    rules = Rules(per_cycle=3, prioritise="weak", neutral_score=0.5)
    # Weak tags first; untagged and unscored tags count as the threshold, in the source's order;
    # the run holds them in the source's order.
    assert taken(path, rules=rules, tag_means=means) == ["w1", "plain", "w2"]
    assert taken(path, rules=Rules(per_cycle=3), tag_means=means) == ["s1", "w1", "plain"]


def test_a_prompt_also_held_out_is_refused_naming_both_places(tmp_path: Path) -> None:
    jsonl(tmp_path / "a.jsonl", "train me", age=2)
    path = jsonl(tmp_path / "b.jsonl", "also train me", "hold me", age=1)
    holdout = holdout_places(("other", "hold me"), "/cfg/holdout.json")
    with pytest.raises(PromptsError) as refused:
        scan(str(tmp_path), holdout)
    assert str(refused.value) == (f"{path}: prompt 1 is also held-out prompt 1 of "
                                  "/cfg/holdout.json; a held-out prompt is never trained on: "
                                  "remove it from one of them")
    assert len(scan(str(tmp_path), holdout_places(("other",), "H")).prompts) == 3


def test_a_file_changed_between_choosing_and_storing_is_refused(tmp_path: Path) -> None:
    path = jsonl(tmp_path / "p.jsonl", "a", "b")
    choice = choose(scan(str(path)), {}, NOW, Rules())
    jsonl(path, "a", "B")
    with pytest.raises(PromptsError, match="changed while the run was being created"):
        list(choice.stream())
    jsonl(path, "a")
    with pytest.raises(PromptsError, match="changed while the run was being created"):
        list(choice.stream())


def test_the_summary_says_where_the_prompts_came_from(tmp_path: Path) -> None:
    jsonl(tmp_path / "a.jsonl", "a1", "a2", age=3)
    jsonl(tmp_path / "b.jsonl", "b1", "b2", age=2)
    used = {prompt_digest("a1"): NOW - timedelta(days=30), prompt_digest("a2"): NOW}
    choice = choose(scan(str(tmp_path)), used, NOW, Rules(per_cycle=2, reuse_after=86400))
    summary = choice.summary()
    assert summary == {"source": str(tmp_path),
                       "files": [{"path": str(tmp_path / "a.jsonl"), "new": 0, "reused": 1},
                                 {"path": str(tmp_path / "b.jsonl"), "new": 1, "reused": 0}],
                       "new": 1, "reused": 1, "remaining": 1, "already_used": 1,
                       "prioritise": "oldest"}
    assert describe(summary) == (f"2 from {tmp_path} (1 new, 1 reused; a.jsonl 0 new, 1 reused; "
                                 "b.jsonl 1 new); 1 unused remain")


# -- a one-off run ------------------------------------------------------------------------------


def test_a_one_off_run_takes_every_prompt_of_a_folder_once(tmp_path: Path) -> None:
    jsonl(tmp_path / "a.jsonl", ("x", "t"), "y", age=2)
    jsonl(tmp_path / "b.jsonl", "y", "z", age=1)
    assert list(every_prompt(str(tmp_path))) == [Prompt("x", "t"), Prompt("y"), Prompt("z")]


def test_a_one_off_run_refuses_a_held_out_prompt_and_an_empty_folder(tmp_path: Path) -> None:
    with pytest.raises(PromptsError, match="no prompt file in it yet"):
        every_prompt(str(tmp_path))
    path = jsonl(tmp_path / "a.jsonl", "x", "y")
    with pytest.raises(PromptsError, match=r"a\.jsonl: prompt 1 is also held-out prompt 0 of H"):
        list(every_prompt(str(path), holdout_places(("y",), "H")))
