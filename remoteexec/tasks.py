"""Worker-side task discovery: ``--import MODULE`` and ``--tasks-dir DIR``.

Only modules the worker's operator names are imported; a message never names one. While a
module is imported, a remote call made by it fails at once with ``ConfigurationError``
(``client.importing_tasks``): this worker serves nothing until its imports are done, so the
call could never be answered.
"""

from __future__ import annotations

import importlib
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from .client import importing_tasks
from .errors import ConfigurationError
from .remote import registered

log = logging.getLogger("remoteexec.tasks")


def import_tasks(modules: Sequence[str] = (), tasks_dir: str | None = None) -> list[str]:
    """Import the named modules and every ``*.py`` in ``tasks_dir``; return the task names.

    The working directory and ``tasks_dir`` are put on ``sys.path`` first, so a module
    next to the command, or a file ``DIR/pi.py``, imports as ``pi``.

    Raises:
        ConfigurationError: a module cannot be imported (it raised, or it made a remote
            call while being imported), or the folder does not exist.
    """
    names = list(modules)
    if "" not in sys.path:
        sys.path.insert(0, "")
    if tasks_dir is not None:
        folder = Path(tasks_dir).resolve()
        if not folder.is_dir():
            raise ConfigurationError(f"--tasks-dir {tasks_dir!r} is not a folder")
        sys.path.insert(0, str(folder))
        names += [p.stem for p in sorted(folder.glob("*.py")) if not p.stem.startswith("_")]
    for name in names:
        token = importing_tasks.set(name)
        try:
            importlib.import_module(name)
        except ConfigurationError as exc:
            raise ConfigurationError(f"cannot import task module {name!r}: {exc}") from exc
        except Exception as exc:
            raise ConfigurationError(f"cannot import task module {name!r}: {exc!r}") from exc
        finally:
            importing_tasks.reset(token)
    tasks = registered()
    log.info("task types: %s", ", ".join(tasks) or "(none)")
    return tasks
