"""Shell completion as the README documents it: click's `_CFTRUNNER_COMPLETE`, through real processes."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

COMMANDS = ["init", "start", "tick", "resume", "cancel", "settle", "status", "show", "report",
            "config", "demo", "sandbox"]


def script(shell: str) -> str:
    """What `_CFTRUNNER_COMPLETE={shell}_source cftrunner` prints: the completion script."""
    result = subprocess.run([sys.executable, "-m", "cftrunner"], capture_output=True, text=True,
                            env={**os.environ, "_CFTRUNNER_COMPLETE": f"{shell}_source"},
                            timeout=120)
    assert (result.returncode, result.stderr) == (0, "")
    return result.stdout


@pytest.mark.parametrize("shell", ["bash", "zsh", "fish"])
def test_each_shell_gets_a_completion_script_that_asks_cftrunner(shell: str) -> None:
    text = script(shell)
    assert f"_CFTRUNNER_COMPLETE={shell}_complete" in text
    assert "cftrunner" in text.replace("_CFTRUNNER_COMPLETE", "")
    if shutil.which(shell) is None:
        return  # checked by its parser below where the shell is installed
    checked = subprocess.run([shell, "-n"], input=text, capture_output=True, text=True, timeout=60)
    assert checked.returncode == 0, checked.stderr


def completions(folder: Path, script_path: Path, *words: str) -> list[str]:
    """What bash completes `cftrunner WORDS...` to, with the script sourced, asking the
    cftrunner command on PATH as a shell would."""
    program = (f"source {script_path}; COMP_WORDS=(cftrunner {' '.join(words)}); "
               f"COMP_CWORD={len(words)}; _cftrunner_completion cftrunner; "
               "printf '%s\\n' \"${COMPREPLY[@]}\"")
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    result = subprocess.run(["bash", "-c", program], capture_output=True, text=True, cwd=folder,
                            env={**os.environ, "PATH": path}, timeout=120)
    assert result.returncode == 0, result.stderr
    return result.stdout.split()


def test_bash_completes_the_commands_and_their_options(tmp_path: Path) -> None:
    if shutil.which("bash") is None:
        pytest.skip("bash is not installed")
    if not (Path(sys.executable).parent / "cftrunner").is_file():
        pytest.skip("the cftrunner script is not installed beside this Python (pip install .)")
    script_path = tmp_path / "cftrunner-complete.bash"
    script_path.write_text(script("bash"))
    every = completions(tmp_path, script_path, "''")
    assert set(COMMANDS) <= set(every)
    assert completions(tmp_path, script_path, "ti") == ["tick"]
    assert "--dry-run" in completions(tmp_path, script_path, "tick", "--d")
