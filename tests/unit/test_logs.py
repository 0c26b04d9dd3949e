"""Logging set-up: JSON lines off a terminal, readable text on one, a log file, secrets redacted."""

from __future__ import annotations

import io
import json
import logging
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog

from cftrunner import logs
from cftrunner.exceptions import InputError


@pytest.fixture(autouse=True)
def logging_put_back() -> Iterator[None]:
    """Each test configures logging for the whole process: put it back for the tests after."""
    saved = structlog.get_config()
    yield
    logs.configure("info", stream=io.StringIO())  # closes a log file a test opened
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


def test_with_a_log_file_every_line_goes_there_and_stderr_keeps_warnings_and_errors(
        tmp_path: Path) -> None:
    stream = Terminal()
    logs.configure("info", stream=stream, file=str(tmp_path / "run.log"))
    log = structlog.get_logger("cftrunner")
    log.info("effect_done", key="add:1")
    log.warning("request_retry", attempt=2)
    log.error("run_failed", reason="x")
    written = [json.loads(line) for line in (tmp_path / "run.log").read_text().splitlines()]
    assert [e["event"] for e in written] == ["effect_done", "request_retry", "run_failed"]
    assert "effect_done" not in stream.getvalue()
    assert "request_retry" in stream.getvalue() and "run_failed" in stream.getvalue()
    assert oct((tmp_path / "run.log").stat().st_mode & 0o777) == "0o600"


def test_the_log_file_is_appended_to_and_its_secrets_redacted(tmp_path: Path) -> None:
    path = tmp_path / "run.log"
    path.write_text('{"event": "earlier"}\n')
    logs.configure("info", secrets=["sk-secret-123"], stream=io.StringIO(), file=str(path))
    structlog.get_logger("cftrunner").info("oops", url="https://x/?k=sk-secret-123")
    structlog.get_logger("cftrunner").warning("loud", header="Bearer sk-secret-123")
    text = path.read_text()
    assert text.startswith('{"event": "earlier"}\n') and len(text.splitlines()) == 3
    assert "sk-secret-123" not in text and text.count("[redacted]") == 2


@pytest.mark.parametrize("fmt", ["json", "console"])
def test_the_format_chosen_applies_to_stderr_and_the_file_alike(tmp_path: Path, fmt: str) -> None:
    stream = Terminal() if fmt == "json" else io.StringIO()  # against what the stream would pick
    logs.configure("info", stream=stream, fmt=fmt, file=str(tmp_path / "run.log"))
    structlog.get_logger("cftrunner").warning("loud", n=1)
    for text in (stream.getvalue(), (tmp_path / "run.log").read_text()):
        assert text.lstrip().startswith("{") is (fmt == "json"), text
        assert "n=1" in text or fmt == "json"


def test_a_log_file_that_cannot_be_written_is_one_input_error(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=f"cannot write the log file {tmp_path}: Is a directory"):
        logs.configure("info", file=str(tmp_path))


def test_a_sink_takes_the_lines_below_warning_off_stderr_and_hears_of_every_line() -> None:
    stream = io.StringIO()
    logs.configure("info", stream=stream)
    heard: list[tuple[str, bool]] = []
    before = logs.divert(lambda event, shown: heard.append((str(event["event"]), shown)))
    structlog.get_logger("cftrunner").info("quiet")
    structlog.get_logger("cftrunner").warning("loud")
    assert logs.divert(before) is not None and before is None
    structlog.get_logger("cftrunner").info("heard_again")
    assert heard == [("quiet", False), ("loud", True)]
    assert [json.loads(line)["event"] for line in stream.getvalue().splitlines()] == [
        "loud", "heard_again"]
