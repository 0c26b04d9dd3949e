"""Where a cycle's prompts come from, and which of them its next run takes.

A cycle's `prompts` names a file, a folder (its `.json` and `.jsonl` files, hidden ones aside) or a
glob (`incoming/*.jsonl`), read oldest file first (by modification time, then name), each in its
own order. A new run of the cycle takes the prompts no earlier run of the cycle used, by digest
(the state database keeps them, in `prompt_uses`), unless `reuse_after` has passed since their use;
at most `prompts_per_cycle` of them. With `prioritise = "weak"`, the prompts whose tag's earlier
prompts scored lowest on average go first; a prompt without a tag, or whose tag has no score yet,
counts as scoring the gate's `score_threshold`.

A source is read twice for a new run, never held whole: `scan` checks every prompt and keeps
each one's digest and tag, and `Choice.stream` reads the chosen prompts' text again as the run's
items are stored, checking that each is the prompt scanned. A file changed in between makes the
run's creation fail and roll back; the next try reads it afresh.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from cftrunner.exceptions import PromptsError
from cftrunner.prompts import Prompt, iter_tagged, prompt_digest

SUFFIXES = (".json", ".jsonl")
ORDERS = ("oldest", "weak")
_PATTERN = re.compile(r"[*?[]")


def is_pattern(source: str) -> bool:
    return _PATTERN.search(source) is not None


def files_of(source: str) -> tuple[Path, ...]:
    """The prompt files of `source`, oldest first. A folder or glob with no prompt file yet is
    none; a file, folder or glob folder that does not exist is a PromptsError."""
    path = Path(source)
    if is_pattern(source):
        fixed = Path(*_fixed_parts(path.parts))
        if not fixed.is_dir():
            raise PromptsError(f"{source}: no such folder {fixed}")
        found = [p for p in fixed.glob(str(path.relative_to(fixed))) if p.is_file()]
    elif path.is_dir():
        try:
            found = [p for p in path.iterdir() if p.suffix.lower() in SUFFIXES
                     and not p.name.startswith(".") and p.is_file()]
        except OSError as error:
            raise PromptsError(f"{source}: cannot be read ({error.strerror or error})") from None
    else:
        return (path,)  # one prompts file, read (or refused as missing) as such
    return tuple(sorted(found, key=_age))


def _fixed_parts(parts: tuple[str, ...]) -> list[str]:
    """The leading parts of a glob's path that hold no wildcard."""
    fixed: list[str] = []
    for part in parts:
        if is_pattern(part):
            break
        fixed.append(part)
    return fixed or ["."]


def _age(path: Path) -> tuple[int, str]:
    try:
        return path.stat().st_mtime_ns, path.name
    except OSError:
        return 0, path.name  # gone since it was listed: reading it says so


@dataclass(frozen=True, slots=True)
class Seen:
    """One prompt of a source as scanned: where it is, its digest and tag."""

    file: int  # its file's index in `Scan.files`
    index: int  # its index in that file, from 0
    digest: str
    tag: str | None


@dataclass(frozen=True)
class Scan:
    """Every prompt of a source, checked; a prompt found in an earlier file too is left out."""

    source: str
    files: tuple[Path, ...]
    prompts: tuple[Seen, ...]
    repeated: int  # prompts left out as found in an earlier file


def scan(source: str, holdout: Mapping[str, str] | None = None) -> Scan:
    """Every prompt of the source, checked; one also among the `holdout` (places by digest) is
    refused, both places named."""
    files = files_of(source)
    prompts: list[Seen] = []
    seen: set[str] = set()
    repeated = 0
    for number, file in enumerate(files):
        for index, prompt in enumerate(iter_tagged(file)):
            digest = prompt_digest(prompt.text)
            if holdout and digest in holdout:
                raise _held_out(f"{file}: prompt {index}", holdout[digest])
            if digest in seen:
                repeated += 1
                continue
            seen.add(digest)
            prompts.append(Seen(number, index, digest, prompt.tag))
    return Scan(source, files, tuple(prompts), repeated)


def every_prompt(source: str, holdout: Mapping[str, str] | None = None) -> Iterator[Prompt]:
    """Every prompt of the source, in order, read as a stream (a one-off run's, whatever earlier
    runs used): a prompt found in an earlier file too is left out, a held-out one refused.

    A file that cannot be read or is empty, and a folder without prompt files, are refused at
    once; a bad prompt when iteration reaches it."""
    files = files_of(source)
    if not files:
        raise PromptsError(f"{source}: no prompt file in it yet")
    return _every_prompt([(file, iter_tagged(file)) for file in files], holdout or {})


def _every_prompt(files: list[tuple[Path, Iterator[Prompt]]],
                  holdout: Mapping[str, str]) -> Iterator[Prompt]:
    seen: set[str] = set()
    for file, prompts in files:
        for index, prompt in enumerate(prompts):
            digest = prompt_digest(prompt.text)
            if digest in seen:
                continue
            if digest in holdout:
                raise _held_out(f"{file}: prompt {index}", holdout[digest])
            seen.add(digest)
            yield prompt


def _held_out(where: str, held: str) -> PromptsError:
    return PromptsError(f"{where} is also {held}; a held-out prompt is never trained on: remove "
                        "it from one of them")


@dataclass(frozen=True)
class Rules:
    """How a cycle takes prompts from its source (see the module's docstring)."""

    per_cycle: int | None = None  # None: every unused prompt
    reuse_after: float | None = None  # seconds; None: a used prompt is never taken again
    prioritise: str = "oldest"
    neutral_score: float = 0.5  # what an untagged or unscored prompt counts as, for "weak"


@dataclass(frozen=True)
class Choice:
    """What a new run takes from a scanned source: `taken`, in the source's order."""

    scan: Scan
    taken: tuple[Seen, ...]
    reused: frozenset[str]  # digests of the taken prompts an earlier run used
    unused: int  # prompts no run used, or usable again: the taken ones and those that remain
    used: int  # prompts an earlier run used that may not be taken again (yet)
    prioritise: str = "oldest"

    @property
    def remaining(self) -> int:
        """Unused prompts this run leaves for the next ones."""
        return self.unused - len(self.taken)

    def summary(self) -> dict[str, Any]:
        """Where the run's prompts came from, as `runs.prompt_source` keeps it."""
        files: dict[int, dict[str, int]] = {}
        for seen in self.taken:
            counts = files.setdefault(seen.file, {"new": 0, "reused": 0})
            counts["reused" if seen.digest in self.reused else "new"] += 1
        return {
            "source": self.scan.source,
            "files": [{"path": str(self.scan.files[number]), **counts}
                      for number, counts in sorted(files.items())],
            "new": len(self.taken) - len(self.reused),
            "reused": len(self.reused),
            "remaining": self.remaining,
            "already_used": self.used,
            "prioritise": self.prioritise,
        }

    def stream(self) -> Iterator[Prompt]:
        """The taken prompts read again from their files, in order; PromptsError when a file no
        longer holds the prompt scanned."""
        wanted: dict[int, dict[int, str]] = {}
        for seen in self.taken:
            wanted.setdefault(seen.file, {})[seen.index] = seen.digest
        for number, positions in sorted(wanted.items()):
            file = self.scan.files[number]
            last = max(positions)
            for index, prompt in enumerate(iter_tagged(file)):
                digest = positions.get(index)
                if digest is not None:
                    if prompt_digest(prompt.text) != digest:
                        raise _changed(file)
                    yield prompt
                if index == last:
                    break
            else:
                raise _changed(file)


def _changed(file: Path) -> PromptsError:
    return PromptsError(f"{file}: changed while the run was being created; nothing was stored, "
                        "try again")


def choose(scanned: Scan, used: Mapping[str, datetime], now: datetime, rules: Rules,
           tag_means: Mapping[str, float] | None = None) -> Choice:
    """The prompts a new run takes from `scanned`, given when each digest was last `used`;
    `tag_means`, the mean score of the cycle's earlier prompts by tag, for "weak"."""
    reuse = None if rules.reuse_after is None else now - timedelta(seconds=rules.reuse_after)
    usable: list[Seen] = []
    reused: set[str] = set()
    for seen in scanned.prompts:
        when = used.get(seen.digest)
        if when is not None and (reuse is None or when > reuse):
            continue
        usable.append(seen)
        if when is not None:
            reused.add(seen.digest)
    taken = usable
    if rules.per_cycle is not None and len(usable) > rules.per_cycle:
        if rules.prioritise == "weak":
            means = tag_means or {}
            # sorted() is stable: among equal means, the source's order.
            ranked = sorted(range(len(usable)), key=lambda n: means.get(
                usable[n].tag or "", rules.neutral_score))
            picked = sorted(ranked[: rules.per_cycle])
            taken = [usable[n] for n in picked]
        else:
            taken = usable[: rules.per_cycle]
    taken_reused = frozenset(seen.digest for seen in taken if seen.digest in reused)
    return Choice(scanned, tuple(taken), taken_reused, unused=len(usable),
                  used=len(scanned.prompts) - len(usable), prioritise=rules.prioritise)


def holdout_places(prompts: tuple[str, ...], source: str | None) -> dict[str, str]:
    """Each held-out prompt's place ("held-out prompt N of FILE") by digest."""
    return {prompt_digest(text): f"held-out prompt {n} of {source or 'the held-out set'}"
            for n, text in enumerate(prompts)}


def describe(summary: Mapping[str, Any] | None) -> str | None:
    """A run's `prompt_source` in one line, as status shows it."""
    if not summary:
        return None
    files = summary.get("files") or []
    parts = [f"{os.path.basename(f['path'])} {f['new']} new"
             + (f", {f['reused']} reused" if f.get("reused") else "") for f in files]
    taken = summary.get("new", 0) + summary.get("reused", 0)
    line = (f"{taken} from {summary.get('source')} ({summary.get('new', 0)} new, "
            f"{summary.get('reused', 0)} reused")
    if parts:
        line += f"; {'; '.join(parts)}"
    return line + f"); {summary.get('remaining', 0)} unused remain"
