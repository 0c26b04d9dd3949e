"""`cftrunner init`: a folder made ready for cron or systemd, every file written only where none is.

The files: a commented cftrunner.toml (every setting at its default), sample prompts and held-out
prompts, the built-in judge template, a crontab line, and a systemd service and timer running
`tick` with the folder's absolute paths. Their text is package data (cftrunner/data/scaffold_*),
the unit files and the crontab line the same as contrib/ with the paths filled in; the judge
template is the built-in one itself. A file already there is left as it is: each new file is
written aside and linked into place, which fails rather than replace anything, so neither a
repeat, a race with another writer nor a crash leaves a file overwritten or half written.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shlex
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from cftrunner.config.run_options import DEFAULT_TEMPLATE
from cftrunner.exceptions import InputError

CONFIG = "cftrunner.toml"
LOG = "cftrunner.log"  # where the crontab line appends tick's output
# (file name, what it is) in the order they are written; README "Operations" describes them.
FILES: tuple[tuple[str, str], ...] = (
    (CONFIG, "the config file, every setting at its default; set project_id and model_alias"),
    ("prompts.json", "sample prompts, to replace with your domain's"),
    ("holdout.json", "held-out prompts, compared on with promote = true"),
    ("judge_template.txt", "the built-in judge prompt, named by judge_prompt"),
    ("crontab.txt", "a crontab line running tick every 10 minutes"),
    ("cftrunner.service", "a systemd service running tick once"),
    ("cftrunner.timer", "a systemd timer starting it every 10 minutes"),
)
# The package data each file is made from (the judge template is DEFAULT_TEMPLATE instead).
_TEMPLATES = {CONFIG: "scaffold_cftrunner.toml", "prompts.json": "scaffold_prompts.json",
              "holdout.json": "scaffold_holdout.json", "crontab.txt": "scaffold_crontab.txt",
              "cftrunner.service": "scaffold_cftrunner.service",
              "cftrunner.timer": "scaffold_cftrunner.timer"}
# Placeholders of the crontab and unit templates, and the paths they stand for.
FOLDER, CONFIG_PATH, COMMAND, LOG_PATH = "@FOLDER@", "@CONFIG@", "@CFTRUNNER@", "@LOG@"
# Link errors of a file system without hard links: the file is then created exclusively.
_NO_LINKS = {errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EMLINK}


@dataclass(frozen=True)
class Scaffold:
    """What init did in `folder`: the files it wrote and those it found there and kept."""

    folder: Path
    command: tuple[str, ...]  # the command the crontab line and the service run
    written: tuple[str, ...]
    kept: tuple[str, ...]

    @property
    def config(self) -> Path:
        return self.folder / CONFIG


def cftrunner_command() -> tuple[str, ...]:
    """The command that runs this cftrunner: the `cftrunner` script installed beside the Python
    running it, else that Python with `-m cftrunner`; absolute either way, as cron and systemd
    want."""
    python = Path(os.path.abspath(sys.executable))
    script = python.parent / "cftrunner"
    if script.is_file() and os.access(script, os.X_OK):
        return (str(script),)
    return (str(python), "-m", "cftrunner")


def contents(folder: Path, command: Sequence[str]) -> dict[str, str]:
    """Each file's text, by name, for an absolute `folder` and `command`."""
    texts = {name: _template(name) for name in _TEMPLATES}
    texts["judge_template.txt"] = DEFAULT_TEMPLATE
    paths = {FOLDER: str(folder), CONFIG_PATH: str(folder / CONFIG), LOG_PATH: str(folder / LOG)}
    texts["crontab.txt"] = _filled(texts["crontab.txt"], paths, command, _cron_word)
    for unit in ("cftrunner.service", "cftrunner.timer"):
        # WorkingDirectory= takes the rest of its line as the path, unquoted, % specifiers only.
        texts[unit] = _filled(texts[unit].replace(FOLDER, str(folder).replace("%", "%%")),
                              paths, command, _unit_word)
    return {name: texts[name] for name, _ in FILES}


def scaffold(folder: str | os.PathLike[str], command: Sequence[str] | None = None) -> Scaffold:
    """Write each file of FILES into `folder` (created if need be) where none is; InputError,
    with nothing written, for a folder that is a file or cannot be created, or a file's place
    taken by a folder."""
    where = Path(os.path.abspath(folder))
    run = tuple(command or cftrunner_command())
    if "\n" in str(where) or "\r" in str(where):
        raise InputError(f"{str(where)!r}: a folder whose path has a line break cannot go in a "
                         "crontab line or a unit file")
    texts = contents(where, run)
    _check_places(where)
    _make_folder(where)
    mode = _file_mode()
    written: list[str] = []
    kept: list[str] = []
    for name, text in texts.items():
        (written if _write_new(where / name, text, mode) else kept).append(name)
    return Scaffold(folder=where, command=run, written=tuple(written), kept=tuple(kept))


def _template(name: str) -> str:
    return (resources.files("cftrunner") / "data" / _TEMPLATES[name]).read_text(encoding="utf-8")


def _filled(text: str, paths: dict[str, str], command: Sequence[str],
            word: Callable[[str], str]) -> str:
    """The template with its placeholders replaced by the paths and the command, each word
    quoted for the file it goes in."""
    text = text.replace(COMMAND, " ".join(word(part) for part in command))
    for placeholder, path in paths.items():
        text = text.replace(placeholder, word(path))
    return text


def _cron_word(word: str) -> str:
    """A word of a crontab command: quoted for /bin/sh, and its % escaped, which cron would
    turn into a line break."""
    return shlex.quote(word).replace("%", "\\%")


def _unit_word(word: str) -> str:
    """A word of a systemd command line (ExecStart=): its % and $ doubled (specifiers and
    variables), quoted when it has a space, a quote or a backslash."""
    word = word.replace("%", "%%").replace("$", "$$")
    if any(char.isspace() or char in "\"'\\" for char in word):
        return '"' + word.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return word


def _check_places(folder: Path) -> None:
    """InputError when the folder is not one, or a file's place in it holds other than a file."""
    if folder.exists() and not folder.is_dir():
        raise InputError(f"{folder} is a file, not a folder: name a folder for init to write in")
    for parent in folder.parents:
        if parent.exists():
            if not parent.is_dir():
                raise InputError(f"cannot create the folder {folder}: {parent} is a file")
            break
    if not folder.is_dir():
        return
    for name, _ in FILES:
        path = folder / name
        if path.exists() and not path.is_file():
            kind = "a folder" if path.is_dir() else "not a regular file"
            raise InputError(f"{path} is {kind}, where init writes its {name}: move it away or "
                             "init another folder")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise InputError(f"cannot write in the folder {folder}: permission denied")


def _make_folder(folder: Path) -> None:
    """Create the folder and its missing parents; InputError, with none of them left, if that
    fails."""
    missing = [path for path in (folder, *folder.parents) if not path.exists()]
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        for path in missing:  # the deepest first
            with contextlib.suppress(OSError):
                path.rmdir()
        raise InputError(f"cannot create the folder {folder}: {exc.strerror}") from None


def _file_mode() -> int:
    """The mode a file created now gets: 0666 less the process's umask."""
    umask = os.umask(0o022)
    os.umask(umask)
    return 0o666 & ~umask


def _write_new(path: Path, text: str, mode: int) -> bool:
    """Write `text` to `path` unless something is there; whether it was written. The text is
    written aside, flushed to disk and then linked into place: never overwritten, never partial."""
    try:
        descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.",
                                                 suffix=".init")
    except OSError as exc:
        raise InputError(f"cannot write {path}: {exc.strerror}") from None
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8", newline="\n") as file:
            file.write(text)
            file.flush()
            os.fsync(file.fileno())
        os.chmod(temporary, mode)
        try:
            os.link(temporary, path)
        except FileExistsError:
            return False
        except OSError as exc:
            if exc.errno not in _NO_LINKS:
                raise
            return _create_exclusively(path, text, mode)
        return True
    except OSError as exc:
        raise InputError(f"cannot write {path}: {exc.strerror}") from None
    finally:
        with contextlib.suppress(OSError):
            os.unlink(temporary)


def _create_exclusively(path: Path, text: str, mode: int) -> bool:
    try:
        with open(path, "x", encoding="utf-8", newline="\n") as file:
            os.chmod(path, mode)
            file.write(text)
    except FileExistsError:
        return False
    return True


def next_steps(done: Scaffold) -> str:
    """What to do after init, as one line."""
    config = str(done.config)
    check = shlex.join([*done.command, "tick", "--dry-run", "--config", config])
    return (f"next: set project_id and model_alias in {config} (or pass --project-id and "
            f"--model-alias), check with `{check}`, then install crontab.txt or the systemd "
            "units (see their first lines)")
