"""Loading the prompts file: accepted shapes and every way it can be unusable."""

from __future__ import annotations

import importlib.resources
import json
from collections.abc import Callable
from pathlib import Path

import pytest

from cftrunner.exceptions import PromptsError
from cftrunner.prompts import load_prompts

WriteFile = Callable[[object], Path]


@pytest.fixture
def write_json(tmp_path: Path) -> WriteFile:
    """Write a value as JSON to prompts.json and return its path."""

    def write(value: object) -> Path:
        path = tmp_path / "prompts.json"
        path.write_text(json.dumps(value), encoding="utf-8")
        return path

    return write


def failure(path: Path) -> str:
    with pytest.raises(PromptsError) as raised:
        load_prompts(path)
    message = raised.value.message
    assert str(path) in message and "\n" not in message
    return message


# accepted shapes


def test_reads_the_tutorial_format(write_json: WriteFile) -> None:
    assert load_prompts(write_json({"test_prompts": ["a", "b"]})) == ["a", "b"]


def test_ignores_other_keys_of_the_object(write_json: WriteFile) -> None:
    path = write_json({"name": "demo", "test_prompts": ["a"], "version": 2})
    assert load_prompts(path) == ["a"]


def test_reads_a_plain_list(write_json: WriteFile) -> None:
    assert load_prompts(write_json(["a", "b", "c"])) == ["a", "b", "c"]


def test_accepts_a_str_path(write_json: WriteFile) -> None:
    assert load_prompts(str(write_json(["a"]))) == ["a"]


def test_returns_prompts_unchanged(write_json: WriteFile) -> None:
    prompts = ["  leading space", "trailing newline\n", "User: hi\n\nAgent: hello"]
    assert load_prompts(write_json(prompts)) == prompts


def test_reads_unicode_prompts(tmp_path: Path) -> None:
    path = tmp_path / "prompts.json"
    prompts = ["Ça va ?", "日本語のプロンプト", "emoji 🙂 and Ω"]
    path.write_text(json.dumps({"test_prompts": prompts}, ensure_ascii=False), encoding="utf-8")
    assert load_prompts(path) == prompts


def test_tolerates_a_utf8_byte_order_mark(tmp_path: Path) -> None:
    path = tmp_path / "prompts.json"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps(["a"]).encode())
    assert load_prompts(path) == ["a"]


def test_reads_the_shipped_sample() -> None:
    resource = importlib.resources.files("cftrunner") / "data" / "sample_prompts.json"
    with importlib.resources.as_file(resource) as path:
        prompts = load_prompts(path)
    assert len(prompts) == 8
    assert all("'safe' or 'unsafe'" in prompt and "Agent:" in prompt for prompt in prompts)


# unusable files


def test_missing_file(tmp_path: Path) -> None:
    assert "no such file" in failure(tmp_path / "absent.json")


def test_directory(tmp_path: Path) -> None:
    assert "is a directory" in failure(tmp_path)


def test_unreadable_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An OS refusal to read (faked: the tests may run as root, who can read anything)."""
    path = tmp_path / "prompts.json"
    path.write_text("[]", encoding="utf-8")

    def refuse(self: Path) -> bytes:
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "read_bytes", refuse)
    assert "cannot be read (Permission denied)" in failure(path)


@pytest.mark.parametrize("content", ["", "  \n\t\n"])
def test_empty_file(tmp_path: Path, content: str) -> None:
    path = tmp_path / "prompts.json"
    path.write_text(content, encoding="utf-8")
    assert "the file is empty" in failure(path)


def test_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "prompts.json"
    path.write_bytes('["caf\u00e9"]'.encode("latin-1"))
    assert "not UTF-8 text (bad byte at offset 5)" in failure(path)


def test_not_json_says_where(tmp_path: Path) -> None:
    path = tmp_path / "prompts.json"
    path.write_text('{\n  "test_prompts": ["a",]\n}', encoding="utf-8")
    assert "not valid JSON" in (message := failure(path))
    assert "line 2, column 24" in message


def test_object_without_test_prompts(write_json: WriteFile) -> None:
    assert 'has no "test_prompts" key' in failure(write_json({"prompts": ["a"]}))


def test_test_prompts_not_a_list(write_json: WriteFile) -> None:
    message = failure(write_json({"test_prompts": "a"}))
    assert '"test_prompts" must be a list of strings, not a string' in message


@pytest.mark.parametrize(("value", "kind"), [("a", "a string"), (3, "a number"), (None, "null")])
def test_top_level_of_the_wrong_type(write_json: WriteFile, value: object, kind: str) -> None:
    assert f"or a list of strings, not {kind}" in failure(write_json(value))


@pytest.mark.parametrize("value", [[], {"test_prompts": []}])
def test_empty_list(write_json: WriteFile, value: object) -> None:
    assert "the list of prompts is empty" in failure(write_json(value))


@pytest.mark.parametrize(
    ("item", "kind"),
    [(1, "a number"), (True, "a boolean"), (None, "null"), (["a"], "an array"), ({}, "an object")],
)
def test_non_string_prompt_names_index_and_type(
    write_json: WriteFile, item: object, kind: str
) -> None:
    assert f"prompt 2 is {kind}, not a string" in failure(write_json(["a", "b", item]))


@pytest.mark.parametrize("blank", ["", " ", "\n\t "])
def test_blank_prompt_names_its_index(write_json: WriteFile, blank: str) -> None:
    assert "prompt 1 is empty or only whitespace" in failure(write_json(["a", blank]))


def test_duplicate_names_both_indexes(write_json: WriteFile) -> None:
    message = failure(write_json(["a", "b", "c", "b", "a"]))
    assert "prompt 3 is a duplicate of prompt 1" in message


def test_prompts_differing_only_in_whitespace_are_not_duplicates(write_json: WriteFile) -> None:
    assert load_prompts(write_json(["a", "a "])) == ["a", "a "]
