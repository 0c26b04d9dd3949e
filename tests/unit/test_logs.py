"""Logging set-up: JSON lines off a terminal, readable text on one, secrets redacted."""

from __future__ import annotations

import io
import json
import logging
import sys
from collections.abc import Iterator

import pytest
import structlog

from cftrunner import logs


@pytest.fixture(autouse=True)
def logging_put_back() -> Iterator[None]:
    """Each test configures logging for the whole process: put it back for the tests after."""
    saved = structlog.get_config()
    yield
    structlog.configure(**saved)


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_off_a_terminal_each_event_is_one_json_line() -> None:
    stream = io.StringIO()
    logs.configure("info", stream=stream)
    structlog.get_logger("cftrunner").info("run_transitioned", run_id="r", state="JUDGED")
    [line] = stream.getvalue().splitlines()
    assert json.loads(line)["state"] == "JUDGED"


def test_on_a_terminal_events_are_readable_text_not_json() -> None:
    stream = Terminal()
    logs.configure("info", stream=stream)
    structlog.get_logger("cftrunner").info("run_transitioned", run_id="r", state="JUDGED")
    text = stream.getvalue()
    assert "run_transitioned" in text and "state=JUDGED" in text
    assert not text.lstrip().startswith("{")


def test_the_level_filters_events() -> None:
    stream = io.StringIO()
    logs.configure("warning", stream=stream)
    structlog.get_logger("cftrunner").info("quiet")
    structlog.get_logger("cftrunner").warning("loud")
    assert [json.loads(line)["event"] for line in stream.getvalue().splitlines()] == ["loud"]


def test_a_secret_is_redacted_wherever_it_appears() -> None:
    stream = io.StringIO()
    logs.configure("info", secrets=["sk-secret-123"], stream=stream)
    structlog.get_logger("cftrunner").info("oops", url="https://x/?k=sk-secret-123")
    assert "sk-secret-123" not in stream.getvalue() and "[redacted]" in stream.getvalue()


def test_without_a_stream_lines_go_to_stderr_as_it_is_when_written(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """So a terminal display that redirects sys.stderr while it is live prints them above itself."""
    configured_with = io.StringIO()
    monkeypatch.setattr(sys, "stderr", configured_with)
    logs.configure("info")
    replaced = io.StringIO()
    monkeypatch.setattr(sys, "stderr", replaced)
    structlog.get_logger("cftrunner").info("run_transitioned", state="JUDGED")
    assert json.loads(replaced.getvalue())["state"] == "JUDGED"
    assert configured_with.getvalue() == ""


def test_a_stream_that_fails_to_write_drops_the_line() -> None:
    class Broken(io.StringIO):
        def write(self, _text: str) -> int:
            raise BrokenPipeError

    logs.configure("info", stream=Broken())
    structlog.get_logger("cftrunner").info("lost")


def test_enabled_follows_the_configured_level() -> None:
    logs.configure("debug", stream=io.StringIO())
    assert logs.enabled(logging.DEBUG)
    logs.configure("warning", stream=io.StringIO())
    assert not logs.enabled(logging.DEBUG) and not logs.enabled(logging.INFO)
    assert logs.enabled(logging.WARNING) and logs.enabled(logging.ERROR)
    structlog.reset_defaults()  # structlog configured otherwise: it decides
    assert logs.enabled(logging.DEBUG)
