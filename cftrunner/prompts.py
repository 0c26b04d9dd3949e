"""Reading and checking a prompts file that a run sends to the model, as a stream."""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO, NamedTuple

from cftrunner.exceptions import PromptsError

PROMPTS_KEY = "test_prompts"
PROMPT_FIELD = "prompt"
TAG_FIELDS = ("tag", "category")  # a JSONL object's label, for `prioritise = "weak"`
_SHAPE = f'an object with a "{PROMPTS_KEY}" list, or a list of strings'
_BOM = b"\xef\xbb\xbf"
_NOT_BLANK = re.compile(rb"[^ \t\r\n]")

# One raw entry: its 0-based index, its line (JSONL only), the decoded value and its tag.
_Entry = tuple[int, int | None, object, str | None]
_UNREAD = object()  # a JSON document not parsed yet


class Prompt(NamedTuple):
    """A prompt as a file holds it: its text, and its tag or category when a JSONL object has one."""

    text: str
    tag: str | None = None


def prompt_digest(text: str) -> str:
    """The prompt's digest as the state database keeps it (32 hex digits), to know it again."""
    return _digest(text.encode("utf-8", "surrogatepass")).hex()


def iter_prompts(path: str | os.PathLike[str]) -> Iterator[str]:
    """The prompts in the file at `path`, unchanged and in file order, read as a stream (see
    `iter_tagged`)."""
    return (prompt.text for prompt in iter_tagged(path))


def iter_tagged(path: str | os.PathLike[str]) -> Iterator[Prompt]:
    """The prompts in the file at `path`, with their tags, unchanged and in file order, read as
    a stream.

    Three formats: the tutorial's JSON object `{"test_prompts": ["...", ...]}` (other keys are
    ignored), a JSON list of strings, or JSONL: one prompt a line, a JSON string or an object with
    a "prompt" field, blank lines skipped. JSONL is chosen by the `.jsonl` suffix, or when the first
    line is a JSON string, or an object with a "prompt" field or with more lines after it. A JSONL
    object may label its prompt with a "tag" (or "category") string.

    Every prompt must be a non-blank string of Unicode text without a NUL character (no lone
    surrogate from a JSON escape such as "\\ud800"), and no prompt may repeat another: two identical
    prompts would give two identical traces that reconciling a lost answer could not tell apart,
    and a duplicated training example is rarely intended. A file that cannot be read, or is empty,
    raises PromptsError at once; a bad prompt raises it when iteration reaches it, naming the file,
    the prompt's index and, in JSONL, its line.
    """
    file = Path(path)
    jsonl, document = _sniff(file)
    if jsonl:
        return _checked(file, _jsonl_entries(file), jsonl=True)
    return _checked(file, _json_entries(file, document), jsonl=False)


def load_prompts(path: str | os.PathLike[str]) -> list[str]:
    """Every prompt of a small file, checked, as a list (see `iter_prompts`)."""
    return list(iter_prompts(path))


def check_prompts(path: str | os.PathLike[str]) -> int:
    """Check every prompt of the file without keeping them (see `iter_prompts`); how many."""
    return sum(1 for _ in iter_prompts(path))


def _open(file: Path) -> BinaryIO:
    if file.is_dir():
        raise PromptsError(f"{file}: is a directory, not a prompts file")
    try:
        return file.open("rb")
    except FileNotFoundError:
        raise PromptsError(f"{file}: no such file") from None
    except OSError as error:
        raise PromptsError(f"{file}: cannot be read ({error.strerror or error})") from None


def _decoded(file: Path, data: bytes | memoryview, offset: int, where: str = "") -> str:
    """`data`, found at byte `offset` of the file, as text."""
    try:
        return str(data, "utf-8")
    except UnicodeDecodeError as error:
        raise PromptsError(f"{file}: {where}not UTF-8 text (bad byte at offset "
                           f"{offset + error.start})") from None


def _lines(handle: BinaryIO) -> Iterator[tuple[int, int, bytes]]:
    """(line number, byte offset, line without a leading byte order mark) for each line."""
    offset = 0
    for number, line in enumerate(handle, 1):
        start = offset
        offset += len(line)
        if number == 1 and line.startswith(_BOM):
            # Editors on Windows often start the file with a byte order mark.
            line, start = line[len(_BOM):], start + len(_BOM)
        yield number, start, line


def _sniff(file: Path) -> tuple[bool, object]:
    """Whether the file is JSONL, from its suffix or its first line, and the JSON document when
    that line already was all of it; refuses an empty file."""
    with _open(file) as handle:
        line = handle.readline()
        start = len(_BOM) if line.startswith(_BOM) else 0
        line = line[start:]
        while line and not line.strip():
            start += len(line)
            line = handle.readline()
        if not line:
            raise PromptsError(f"{file}: the file is empty")
        head = _first_char(line)
        if file.suffix.lower() == ".jsonl" or head == b'"':
            return True, _UNREAD
        if head != b"{":
            return False, _UNREAD
        text = _decoded(file, line, start)
        del line
        try:
            value = json.loads(text)
        except ValueError:
            return False, _UNREAD  # an object spread over several lines: JSON
        del text
        more = any(rest.strip() for rest in handle)
    # A lone object without "prompt" is the tutorial's format (maybe gone wrong): JSON.
    if PROMPTS_KEY not in value and (PROMPT_FIELD in value or more):
        return True, _UNREAD
    # json.dumps writes one line: that line's parse is the document's, not to be done again.
    return False, _UNREAD if more else value


def _first_char(line: bytes) -> bytes:
    # Found without copying the line (a one-line JSON file can be large), nor keeping a match
    # object that would hold on to it.
    found = _NOT_BLANK.search(line)
    return found.group() if found else b""


def _jsonl_entries(file: Path) -> Iterator[_Entry]:
    """Each non-blank line's prompt, decoded one line at a time."""
    index = 0
    with _open(file) as handle:
        for number, start, line in _lines(handle):
            if not line.strip():
                continue
            where = f"line {number}: prompt {index} is "
            text = _decoded(file, line, start, where)
            try:
                value = json.loads(text)
            except ValueError as error:
                detail = (f"{error.msg} at column {error.colno}"
                          if isinstance(error, json.JSONDecodeError) else str(error))
                raise PromptsError(f"{file}: {where}not valid JSON ({detail})") from None
            tag = None
            if isinstance(value, dict):
                if PROMPT_FIELD not in value:
                    raise PromptsError(
                        f'{file}: {where}an object without a "{PROMPT_FIELD}" field')
                tag = _tag(file, where, value)
                value = value[PROMPT_FIELD]
            elif not isinstance(value, str):
                raise PromptsError(f'{file}: {where}{_json_type(value)}, not a string or an '
                                   f'object with a "{PROMPT_FIELD}" field')
            yield index, number, value, tag
            index += 1


def _tag(file: Path, where: str, value: dict[str, object]) -> str | None:
    """A JSONL object's "tag" (else "category"), a non-blank string if given."""
    for name in TAG_FIELDS:
        tag = value.get(name)
        if tag is None:
            continue
        if not isinstance(tag, str) or not tag.strip():
            raise PromptsError(f'{file}: {where}an object whose "{name}" is not a non-blank string')
        return tag.strip()
    return None


def _json_entries(file: Path, document: object = _UNREAD) -> Iterator[_Entry]:
    """The entries of a JSON prompts file, or of its `document` when already parsed.

    The stdlib parser reads whole documents only: the file is read and parsed once, the bytes and
    the text are dropped as soon as they are no longer needed, and the parsed list is yielded from
    without further copies. For files too large for that, JSONL is read one line at a time.
    """
    parsed = _parsed(file) if document is _UNREAD else document
    del document
    if isinstance(parsed, dict):
        if PROMPTS_KEY not in parsed:
            raise PromptsError(f'{file}: expected {_SHAPE}; the object has no "{PROMPTS_KEY}" key')
        parsed = parsed[PROMPTS_KEY]
        if not isinstance(parsed, list):
            raise PromptsError(
                f'{file}: "{PROMPTS_KEY}" must be a list of strings, not {_json_type(parsed)}'
            )
    elif not isinstance(parsed, list):
        raise PromptsError(f"{file}: expected {_SHAPE}, not {_json_type(parsed)}")
    if not parsed:
        raise PromptsError(f"{file}: the list of prompts is empty")
    for index, value in enumerate(parsed):
        yield index, None, value, None


def _parsed(file: Path) -> object:
    with _open(file) as handle:
        data = handle.read()
    skip = len(_BOM) if data.startswith(_BOM) else 0
    text = _decoded(file, memoryview(data)[skip:], skip)
    del data
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise PromptsError(
            f"{file}: not valid JSON: {error.msg} at line {error.lineno}, column {error.colno}"
        ) from None
    # An integer of over 4300 digits is refused with a plain ValueError.
    except ValueError as error:
        raise PromptsError(f"{file}: not valid JSON: {error}") from None


def _checked(file: Path, entries: Iterator[_Entry], jsonl: bool) -> Iterator[Prompt]:
    """The entries' prompts, each checked; duplicates are found by digest, not by keeping every
    prompt, and only once one is found is the file read again for the first copy's index."""
    seen: set[bytes] = set()
    for index, line, value, tag in entries:
        where = f"{file}: {'' if line is None else f'line {line}: '}prompt {index}"
        if not isinstance(value, str):
            raise PromptsError(f"{where} is {_json_type(value)}, not a string")
        if not value.strip():
            raise PromptsError(f"{where} is empty or only whitespace")
        digest = _digest(_text_bytes(value, where))
        if digest in seen:
            first = _first_copy(file, value, index, jsonl)
            if first is not None:  # else two different prompts share a digest: not a duplicate
                raise PromptsError(f"{where} is a duplicate of {first}")
        seen.add(digest)
        yield Prompt(value, tag)


def _text_bytes(prompt: str, where: str) -> bytes:
    """The prompt as UTF-8, once it is text that both databases store as it is."""
    # PostgreSQL refuses a NUL in text, where SQLite would keep it: refused here for both alike.
    nul = prompt.find("\x00")
    if nul >= 0:
        raise PromptsError(f"{where} holds a NUL character (\\u0000 at character {nul}), which the "
                           "state database cannot store")
    try:
        return prompt.encode("utf-8")
    except UnicodeEncodeError as error:
        # A JSON escape such as "\ud800" alone decodes to half a character, which no text holds.
        raise PromptsError(f"{where} holds a lone surrogate (\\u{ord(prompt[error.start]):04x} at "
                           f"character {error.start}), which is not Unicode text") from None


def _digest(prompt: bytes) -> bytes:
    return hashlib.blake2b(prompt, digest_size=16).digest()


def _first_copy(file: Path, prompt: str, before: int, jsonl: bool) -> str | None:
    """Where `prompt` first occurs in the file before prompt `before`, as a message names it."""
    for index, line, value, _tag in _jsonl_entries(file) if jsonl else _json_entries(file):
        if index >= before:
            break
        if value == prompt:
            return f"prompt {index}" + ("" if line is None else f" (line {line})")
    return None


def _json_type(value: object) -> str:
    """The JSON name of a decoded value's type, with its article, for messages."""
    if value is None:
        return "null"
    names = {bool: "a boolean", int: "a number", float: "a number", str: "a string"}
    return names.get(type(value), "an array" if isinstance(value, list) else "an object")
