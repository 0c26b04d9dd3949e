"""The static checks run with the tests, so the README's one test command covers everything CI does."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=600)


def test_the_package_type_checks_strictly() -> None:
    result = run("mypy")
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_code_passes_the_linter() -> None:
    result = run("ruff", "check", ".")
    assert result.returncode == 0, result.stdout + result.stderr


def test_pure_modules_import_no_io_libraries() -> None:
    """states, models, payloads, judge, run_config, retry, prompts, render and progress stay free of
    SQLAlchemy, requests, click."""
    pure = ["states", "models", "payloads", "judge", "run_config", "retry", "prompts", "render",
            "progress"]
    code = ("import sys; " + "; ".join(f"import cftrunner.{m}" for m in pure)
            + "; print(sorted(m for m in ('sqlalchemy', 'requests', 'click') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert result.stdout.strip() == "[]", result.stderr


def test_the_library_never_imports_click() -> None:
    code = ("import sys, cftrunner.service, cftrunner.runner, cftrunner.sandbox; "
            "print('click' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert result.stdout.strip() == "False", result.stderr


def test_the_command_line_imports_the_heavy_libraries_only_for_a_command_that_needs_them() -> None:
    """`--help` and `--version` start without SQLAlchemy, requests or structlog, which take most of
    the start-up time to import; each command imports the library it calls when it runs."""
    code = ("import sys, cftrunner.cli; print(sorted(m for m in ('sqlalchemy', 'requests', 'structlog') "
            "if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert result.stdout.strip() == "[]", result.stderr
