"""Loading and checking the prompts file that a run sends to the model."""

from __future__ import annotations

import json
import os
from pathlib import Path

from cftrunner.exceptions import PromptsError

PROMPTS_KEY = "test_prompts"
_SHAPE = f'an object with a "{PROMPTS_KEY}" list, or a list of strings'


def load_prompts(path: str | os.PathLike[str]) -> list[str]:
    """The prompts in the file at `path`, unchanged and in file order.

    The file is either the tutorial's JSON object `{"test_prompts": ["...", ...]}` (other keys are
    ignored) or a JSON list of strings. Every prompt must be a non-blank string, and no prompt may
    repeat another: two identical prompts would give two identical traces that reconciling a lost
    answer could not tell apart, and a duplicated training example is rarely intended.
    Raises PromptsError, naming the file and the problem, otherwise.
    """
    file = Path(path)
    text = _read_text(file)
    return _checked(file, _json_items(file, text))


def _read_text(file: Path) -> str:
    if file.is_dir():
        raise PromptsError(f"{file}: is a directory, not a prompts file")
    try:
        data = file.read_bytes()
    except FileNotFoundError:
        raise PromptsError(f"{file}: no such file") from None
    except OSError as error:
        raise PromptsError(f"{file}: cannot be read ({error.strerror or error})") from None
    try:
        # utf-8-sig: editors on Windows often start the file with a byte order mark.
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise PromptsError(f"{file}: not UTF-8 text (bad byte at offset {error.start})") from None
    if not text.strip():
        raise PromptsError(f"{file}: the file is empty")
    return text


def _json_items(file: Path, text: str) -> list[object]:
    """The raw prompt entries of a JSON prompts file, before any check of the entries themselves."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise PromptsError(
            f"{file}: not valid JSON: {error.msg} at line {error.lineno}, column {error.colno}"
        ) from None
    # An integer of over 4300 digits is refused with a plain ValueError.
    except ValueError as error:
        raise PromptsError(f"{file}: not valid JSON: {error}") from None
    if isinstance(data, dict):
        if PROMPTS_KEY not in data:
            raise PromptsError(f'{file}: expected {_SHAPE}; the object has no "{PROMPTS_KEY}" key')
        data = data[PROMPTS_KEY]
        if not isinstance(data, list):
            raise PromptsError(
                f'{file}: "{PROMPTS_KEY}" must be a list of strings, not {_json_type(data)}'
            )
    elif not isinstance(data, list):
        raise PromptsError(f"{file}: expected {_SHAPE}, not {_json_type(data)}")
    return list(data)


def _checked(file: Path, items: list[object]) -> list[str]:
    if not items:
        raise PromptsError(f"{file}: the list of prompts is empty")
    prompts: list[str] = []
    first_index: dict[str, int] = {}
    for index, item in enumerate(items):
        if not isinstance(item, str):
            raise PromptsError(f"{file}: prompt {index} is {_json_type(item)}, not a string")
        if not item.strip():
            raise PromptsError(f"{file}: prompt {index} is empty or only whitespace")
        if item in first_index:
            raise PromptsError(
                f"{file}: prompt {index} is a duplicate of prompt {first_index[item]}"
            )
        first_index[item] = index
        prompts.append(item)
    return prompts


def _json_type(value: object) -> str:
    """The JSON name of a decoded value's type, with its article, for messages."""
    if value is None:
        return "null"
    names = {bool: "a boolean", int: "a number", float: "a number", str: "a string"}
    return names.get(type(value), "an array" if isinstance(value, list) else "an object")
