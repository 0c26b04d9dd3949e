"""Reading the prompts file: accepted shapes, JSONL, and every way it can be unusable."""

from __future__ import annotations

import importlib.resources
import json
from collections.abc import Callable
from pathlib import Path

import pytest

from cftrunner import prompts as prompts_module
from cftrunner.exceptions import PromptsError
from cftrunner.prompts import check_prompts, iter_prompts, load_prompts

WriteFile = Callable[[object], Path]
WriteLines = Callable[..., Path]


@pytest.fixture
def write_json(tmp_path: Path) -> WriteFile:
    """Write a value as JSON to prompts.json and return its path."""

    def write(value: object) -> Path:
        path = tmp_path / "prompts.json"
        path.write_text(json.dumps(value), encoding="utf-8")
        return path

    return write


@pytest.fixture
def write_lines(tmp_path: Path) -> WriteLines:
    """Write lines of text to prompts.jsonl (or `name`) and return its path."""

    def write(*lines: str, name: str = "prompts.jsonl") -> Path:
        path = tmp_path / name
        path.write_text("".join(f"{line}\n" for line in lines), encoding="utf-8")
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

    def refuse(self: Path, *args: object, **kwargs: object) -> object:
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "open", refuse)
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


@pytest.mark.parametrize(("value", "kind"), [(3, "a number"), (None, "null"), (True, "a boolean")])
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


def test_a_nul_character_names_its_index(write_json: WriteFile) -> None:
    message = failure(write_json(["a", "b\u0000c"]))
    assert message.endswith("prompt 1 holds a NUL character (\\u0000 at character 1), which the "
                            "state database cannot store")


def test_a_lone_surrogate_names_its_index(write_json: WriteFile) -> None:
    message = failure(write_json(["a", "b", "c\ud800"]))
    assert message.endswith("prompt 2 holds a lone surrogate (\\ud800 at character 1), which is "
                            "not Unicode text")


def test_a_surrogate_pair_escape_is_one_character(tmp_path: Path) -> None:
    path = tmp_path / "prompts.json"
    path.write_text('["smile \\ud83d\\ude00"]', encoding="ascii")
    assert load_prompts(path) == ["smile \U0001f600"]


# JSONL: one prompt a line


def test_reads_jsonl_strings(write_lines: WriteLines) -> None:
    assert load_prompts(write_lines('"a"', '"b"')) == ["a", "b"]


def test_reads_jsonl_objects_by_their_prompt_field(write_lines: WriteLines) -> None:
    path = write_lines('{"prompt": "a", "id": 7}', '{"id": 8, "prompt": "b"}')
    assert load_prompts(path) == ["a", "b"]


def test_reads_jsonl_mixing_strings_and_objects(write_lines: WriteLines) -> None:
    assert load_prompts(write_lines('"a"', '{"prompt": "b"}', '"c"')) == ["a", "b", "c"]


def test_skips_blank_lines_in_jsonl(write_lines: WriteLines) -> None:
    assert load_prompts(write_lines("", '"a"', "   ", "", '"b"', "\t")) == ["a", "b"]


def test_jsonl_prompts_keep_their_escapes_decoded(write_lines: WriteLines) -> None:
    prompt = "User: hi\n\nAgent: \"hello\" \u00e9"
    assert load_prompts(write_lines(json.dumps(prompt))) == [prompt]


def test_jsonl_tolerates_a_byte_order_mark_and_crlf(tmp_path: Path) -> None:
    path = tmp_path / "prompts.jsonl"
    path.write_bytes(b'\xef\xbb\xbf"a"\r\n"b"\r\n')
    assert load_prompts(path) == ["a", "b"]


def test_a_bad_jsonl_line_names_its_line_and_index(write_lines: WriteLines) -> None:
    message = failure(write_lines('"a"', "", '{"prompt": "b",}'))
    assert "line 3: prompt 1 is not valid JSON" in message


def test_a_jsonl_object_without_prompt_names_its_line_and_index(write_lines: WriteLines) -> None:
    message = failure(write_lines('"a"', '{"text": "b"}'))
    assert 'line 2: prompt 1 is an object without a "prompt" field' in message


def test_a_jsonl_prompt_field_that_is_not_a_string(write_lines: WriteLines) -> None:
    assert "line 1: prompt 0 is a number, not a string" in failure(write_lines('{"prompt": 3}'))


def test_a_jsonl_line_neither_string_nor_object(write_lines: WriteLines) -> None:
    message = failure(write_lines('"a"', '["b"]'))
    assert 'line 2: prompt 1 is an array, not a string or an object with a "prompt" field' in message


def test_a_jsonl_nul_character_names_its_line_and_index(write_lines: WriteLines) -> None:
    message = failure(write_lines('"a"', "", '{"prompt": "\\u0000"}'))
    assert "line 3: prompt 1 holds a NUL character" in message


def test_a_jsonl_lone_surrogate_names_its_line_and_index(write_lines: WriteLines) -> None:
    message = failure(write_lines('"a"', '"\\udfff b"'))
    assert "line 2: prompt 1 holds a lone surrogate (\\udfff at character 0)" in message


def test_a_blank_jsonl_prompt_names_its_line_and_index(write_lines: WriteLines) -> None:
    assert "line 2: prompt 1 is empty or only whitespace" in failure(write_lines('"a"', '"  "'))


def test_jsonl_not_utf8_names_the_line_and_the_byte_offset_in_the_file(tmp_path: Path) -> None:
    path = tmp_path / "prompts.jsonl"
    path.write_bytes(b'"a"\n"caf\xe9"\n')
    assert "line 2: prompt 1 is not UTF-8 text (bad byte at offset 8)" in failure(path)


def test_duplicates_across_a_jsonl_file_name_both_indexes_and_lines(
    write_lines: WriteLines,
) -> None:
    message = failure(write_lines('"a"', '"b"', "", '{"prompt": "c"}', '{"prompt": "a"}'))
    assert "line 5: prompt 3 is a duplicate of prompt 0 (line 1)" in message


def test_prompts_sharing_a_digest_are_not_taken_for_duplicates(
    write_lines: WriteLines, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Duplicates are found by digest; a digest collision is told apart by the prompts' text."""
    monkeypatch.setattr(prompts_module, "_digest", lambda prompt: b"same")
    assert load_prompts(write_lines('"a"', '"b"')) == ["a", "b"]


def test_a_jsonl_file_of_blank_lines_is_empty(write_lines: WriteLines) -> None:
    assert "the file is empty" in failure(write_lines("", "  "))


# choosing JSONL without the .jsonl suffix


def test_lines_of_strings_are_jsonl_whatever_the_suffix(write_lines: WriteLines) -> None:
    assert load_prompts(write_lines('"a"', '"b"', name="prompts.json")) == ["a", "b"]


def test_a_lone_json_string_is_one_jsonl_prompt(write_json: WriteFile) -> None:
    assert load_prompts(write_json("a")) == ["a"]


def test_lines_of_objects_with_prompt_are_jsonl_whatever_the_suffix(
    write_lines: WriteLines,
) -> None:
    path = write_lines('{"prompt": "a"}', '{"prompt": "b"}', name="prompts.txt")
    assert load_prompts(path) == ["a", "b"]


def test_lines_of_objects_without_prompt_are_reported_as_jsonl(write_lines: WriteLines) -> None:
    message = failure(write_lines('{"text": "a"}', '{"text": "b"}', name="prompts.json"))
    assert 'line 1: prompt 0 is an object without a "prompt" field' in message


def test_the_one_line_tutorial_format_is_not_taken_for_jsonl(write_lines: WriteLines) -> None:
    path = write_lines('{"test_prompts": ["a", "b"]}', name="prompts.json")
    assert load_prompts(path) == ["a", "b"]


def test_a_one_line_object_without_either_key_is_reported_as_json(
    write_lines: WriteLines,
) -> None:
    assert 'has no "test_prompts" key' in failure(write_lines('{"text": "a"}', name="p.json"))


# streaming


def test_iter_prompts_refuses_an_unusable_file_when_called(tmp_path: Path) -> None:
    with pytest.raises(PromptsError, match="no such file"):
        iter_prompts(tmp_path / "absent.jsonl")


def test_iter_prompts_yields_every_good_prompt_before_the_first_bad_one(
    write_lines: WriteLines,
) -> None:
    prompts = iter_prompts(write_lines('"a"', '"b"', "3", '"c"'))
    assert [next(prompts), next(prompts)] == ["a", "b"]
    with pytest.raises(PromptsError, match="line 3: prompt 2 is a number"):
        next(prompts)


def test_check_prompts_counts_the_prompts_of_a_good_file(write_lines: WriteLines) -> None:
    assert check_prompts(write_lines('"a"', "", '{"prompt": "b"}')) == 2
