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


def test_imports_flow_one_way_as_the_contracts_declare() -> None:
    """The layers and forbidden imports declared in pyproject.toml ([tool.importlinter])."""
    result = subprocess.run([str(Path(sys.executable).with_name("lint-imports"))], cwd=ROOT,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr


MAX_MODULE_LINES = 300


def test_every_module_says_what_it_is_for_in_its_first_line_and_stays_small() -> None:
    """Each module of the package opens with a one-line docstring of its responsibility, and
    none grows past about 300 lines."""
    import ast

    for path in sorted((ROOT / "cftrunner").rglob("*.py")):
        text = path.read_text(encoding="utf-8")
        name = path.relative_to(ROOT)
        docstring = ast.get_docstring(ast.parse(text))
        if path.name != "__main__.py" and "versions" not in path.parts:
            assert docstring and docstring.splitlines()[0].strip(), f"{name} has no docstring"
        assert len(text.splitlines()) <= MAX_MODULE_LINES, f"{name} is over {MAX_MODULE_LINES} lines"


def test_pure_modules_import_no_io_libraries() -> None:
    """states, models, payloads, judge, config.run_options, retry, prompts, render and progress stay free of
    SQLAlchemy, requests, click."""
    pure = ["states", "records", "payloads.bodies", "payloads.replies", "payloads.finetuning", "judge",
            "config.run_options", "retry", "prompts", "views.status", "views.progress"]
    code = ("import sys; " + "; ".join(f"import cftrunner.{m}" for m in pure)
            + "; print(sorted(m for m in ('sqlalchemy', 'requests', 'click') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert result.stdout.strip() == "[]", result.stderr


def test_the_library_never_imports_click() -> None:
    code = ("import sys, cftrunner.service, cftrunner.driver, cftrunner.sandbox; "
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


def test_the_readme_module_map_names_every_module_of_the_package() -> None:
    """The README's picture of the flow stays the tree: each module (but the sandbox's, the
    HTML pages' and the migrations', named by their folder) appears in it by name."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    start = readme.index("### The package, as the flow of a command")
    block = readme[start:readme.index("```\n", readme.index("```\ncftrunner/", start) + 4)]
    missing = []
    for path in sorted((ROOT / "cftrunner").rglob("*.py")):
        parts = path.relative_to(ROOT / "cftrunner").parts
        if parts[0] == "sandbox" or "migrations" in parts or "pages" in parts:
            folder = {"sandbox": "sandbox/", "pages": "pages/", "migrations": "migrations/"}
            assert any(f in block for k, f in folder.items() if k in parts), parts
            continue
        if path.name in ("__init__.py", "__main__.py"):
            continue
        if path.stem not in block:
            missing.append("/".join(parts))
    assert missing == [], f"not in the README's module map: {missing}"
