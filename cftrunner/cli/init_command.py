"""The `init` command: a folder set up to run cycles from cron or systemd, nothing overwritten."""

from __future__ import annotations

import click


@click.command("init")
@click.argument("folder", required=False, default=".", metavar="[FOLDER]")
def init(folder: str) -> int:
    """Set up FOLDER (default: the current folder, created if need be) to run cycles from cron
    or systemd: a commented cftrunner.toml with every setting at its default, sample
    prompts.json and holdout.json, the built-in judge prompt as judge_template.txt, a crontab
    line in crontab.txt, and cftrunner.service and cftrunner.timer, all with FOLDER's absolute
    paths. A file already there is kept as it is and listed as kept, so init is safe to repeat
    (exit 0). A FOLDER that is a file or cannot be created, or a folder where one of the files
    goes, is one error line (exit 2) and nothing is written.

    Example: cftrunner init /srv/cftrunner
    """
    from cftrunner.service.scaffold import FILES, next_steps, scaffold

    done = scaffold(folder)
    what = dict(FILES)
    for name, _ in FILES:
        path = done.folder / name
        if name in done.written:
            click.echo(f"wrote {path}: {what[name]}")
        else:
            click.echo(f"kept {path}: already there, left as it is")
    if not done.written:
        click.echo(f"nothing written: all {len(FILES)} files were already in {done.folder}")
    else:
        click.echo(next_steps(done))
    return 0
