"""``remoteexec dead``: list, retry and drop the dead letters a backend keeps.

``list`` prints the newest letters, newest first, one a line: id, when, queue, whether it
can be retried, and the task's name and why it was given up on (``--traceback``: the last
failure's remote traceback under it; ``--json``: every field, one object a line).
``retry`` enqueues the tasks of the letters named (or ``--all``) again, as
``Backend.retry_dead`` does; a letter whose task was not kept is skipped (named, or with
``--all`` counted), and one whose call is past its deadline is named too: the worker that
claims it drops it.
``drop`` deletes letters.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

from .backends import Backend, DeadLetter

__all__ = ["add_dead_parsers", "dead_command"]


def add_dead_parsers(sub: Any) -> list[argparse.ArgumentParser]:
    """The ``dead`` subcommand and its own (``list``, ``retry``, ``drop``), added to
    ``sub``; returns the latter three, for the caller to give them the URL options."""
    dead = sub.add_parser("dead", help="dead letters: list, retry or drop them")
    dead_sub = dead.add_subparsers(dest="dead_command", required=True)
    listing = dead_sub.add_parser("list", help="the newest dead letters, newest first")
    listing.add_argument("--queue", help="only the dead letters of this queue")
    listing.add_argument("--json", action="store_true", help="one JSON object a line")
    listing.add_argument("--traceback", action="store_true", help="each one's traceback too")
    parsers = [listing]
    for name, text in (
        ("retry", "enqueue the tasks of dead letters again"),
        ("drop", "delete dead letters"),
    ):
        cmd = dead_sub.add_parser(name, help=text)
        cmd.add_argument("ids", nargs="*", metavar="ID", help=f"the dead letters to {name}")
        cmd.add_argument("--all", action="store_true", help=f"{name} every dead letter")
        cmd.add_argument("--queue", help="with --all: only those of this queue")
        parsers.append(cmd)
    return parsers


def dead_command(args: argparse.Namespace) -> None:
    """Run ``remoteexec dead list|retry|drop``; exits 1 when an id named to ``retry`` was
    not retried.

    Raises:
        ConfigurationError: ``retry`` or ``drop`` without ids or ``--all``, or with both.
    """
    from .backends.base import MAX_DEAD_LETTERS
    from .client import Client
    from .errors import ConfigurationError

    command = args.dead_command
    if command != "list" and bool(args.ids) == args.all:
        raise ConfigurationError(f"dead {command} takes either dead letter ids or --all")
    with Client(args.url) as client:
        letters = client.backend.dead_letters(args.queue, limit=MAX_DEAD_LETTERS)
        if command == "drop":
            ids = args.ids or [d.id for d in letters]
            print(f"dropped {client.backend.drop_dead(ids)} dead letter(s)")
        elif command == "retry" and not _retry(client.backend, letters, args.ids):
            raise SystemExit(1)
    if command == "list":
        _list(letters, as_json=args.json, tracebacks=args.traceback)


def _list(letters: Sequence[DeadLetter], *, as_json: bool, tracebacks: bool) -> None:
    now = time.time()
    for d in letters:
        if as_json:
            print(json.dumps(asdict(d)))
            continue
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(d.at))
        can = "retryable" if d.retryable else "not-kept"
        late = "  (past its deadline)" if _late(d, now) else ""
        print(f"{d.id}  {when}  {d.queue}  {can}  {d.name}: {d.reason}{late}")
        if tracebacks and d.traceback:
            print("".join(f"    {line}\n" for line in d.traceback.rstrip("\n").split("\n")))


def _retry(backend: Backend, letters: Sequence[DeadLetter], ids: Sequence[str]) -> bool:
    """Retry the letters ``ids`` (all of ``letters`` if none) and say what was done;
    False if an id named was not retried."""
    from .config import MAX_DEAD_BODY

    by_id = {d.id: d for d in reversed(letters)}  # the newest letter of an id wins
    chosen = [by_id[i] for i in dict.fromkeys(ids) if i in by_id] if ids else list(letters)
    unknown = [i for i in dict.fromkeys(ids) if i not in by_id]
    for task_id in unknown:
        print(f"{task_id}: no such dead letter", file=sys.stderr)
    kept = [d for d in chosen if d.retryable]
    why = f"its task was not kept (a refused call, or a body over {MAX_DEAD_BODY} bytes)"
    for d in chosen if ids else ():
        if not d.retryable:
            print(f"{d.id}: cannot be retried: {why}", file=sys.stderr)
    if not ids and len(kept) < len(chosen):
        print(f"skipped {len(chosen) - len(kept)} dead letter(s): {why}")
    retried = backend.retry_dead([d.id for d in kept])
    print(f"retried {retried} dead letter(s)")
    now = time.time()
    for d in kept:
        if _late(d, now):
            print(f"{d.id}: past its deadline: the worker that claims it drops it unrun")
    return not ids or (not unknown and len(kept) == len(chosen) and retried == len(kept))


def _late(letter: DeadLetter, now: float) -> bool:
    return 0 < letter.deadline < now
