"""Task types for the end-to-end tests. The tests copy this file into a temporary folder
and start real ``remoteexec-worker`` processes with ``--import rx_e2e_tasks``."""

from __future__ import annotations

import asyncio
import hashlib
import math
import os
import threading
import time
import warnings

from remoteexec import remote


def _note(ledger: str | None, *fields: object) -> None:
    if ledger:
        with open(ledger, "a") as f:
            f.write(" ".join(str(x) for x in fields) + "\n")


@remote
class CalculateMultipleOfPi:
    def execute(self, n):
        return math.pi * n


@remote
class Echo:
    def value(self, x):
        return x

    def both(self, *args, **kwargs):
        return [list(args), kwargs]

    def pid(self):
        return os.getpid()

    def digest(self, x):
        return hashlib.sha256(x).hexdigest()

    async def later(self, x, delay=0.01):
        await asyncio.sleep(delay)
        return x


@remote
class Failing:
    def execute(self, text):
        raise ValueError(f"bad value: {text}")  # the traceback must name this line

    def lookup(self, key):
        return {}[key]  # a KeyError, as from a bug in a task

    def noisy(self):
        """Warns, and has a thread die of an exception, then returns: both reach stderr."""
        warnings.warn("a task's own warning", UserWarning, stacklevel=1)
        thread = threading.Thread(target=dict().pop, args=("no such key",), name="task-thread")
        thread.start()
        thread.join()
        return "done"


@remote
class Slow:
    def execute(self, seconds, ledger=None, tag=""):
        _note(ledger, "start", tag, os.getpid(), time.time())
        time.sleep(seconds)
        _note(ledger, "end", tag, os.getpid(), time.time())
        return os.getpid()


@remote(max_attempts=2)
class KillsItsWorker:
    def execute(self, ledger=None):
        _note(ledger, "start", os.getpid())
        os._exit(9)


@remote(max_attempts=2)
class RaisesAlways:
    """A poison task that fails every time: notes each run in its ledger, then raises."""

    def execute(self, ledger):
        _note(ledger, "run", os.getpid(), time.time())
        raise ValueError("poison: this task always fails")


@remote(time_limit=1)
class Sleepy:
    def execute(self, seconds):
        time.sleep(seconds)
        return seconds


@remote
class Poison:
    """Kills its worker on every attempt (default max_attempts: 3)."""

    def execute(self):
        os._exit(9)


@remote
class Nested:
    def execute(self, n, timeout=5.0):
        """Calls another task from inside a task."""
        return CalculateMultipleOfPi.execute.options(timeout=timeout)(n)


@remote
class Ledgered:
    """Writes when each run starts and ends, to check no task runs twice at once."""

    def execute(self, i, ledger):
        pid = os.getpid()
        _note(ledger, "start", i, pid, time.time())
        _note(ledger, "end", i, pid, time.time())
        return i


@remote(time_limit=30)
class LimitedPoison:
    """Kills the process it runs in (a time-limited task's helper) on every attempt."""

    def execute(self):
        os._exit(9)


@remote(time_limit=30)
class LimitedNested:
    """A time-limited task (run in a helper process) that calls another task."""

    def execute(self, n):
        return [os.getpid(), CalculateMultipleOfPi.execute.options(timeout=20)(n)]


@remote(max_attempts=1)
class OnlyOnce:
    """Fails with WorkerLost if it is ever delivered a second time (a lease expired)."""

    def execute(self, seconds, ledger=None, tag=""):
        _note(ledger, "start", tag, os.getpid(), time.time())
        time.sleep(seconds)
        _note(ledger, "end", tag, os.getpid(), time.time())
        return os.getpid()


@remote
class FailsOn:
    """Raises for the items in ``bad``; the items in ``slow`` take half a second."""

    def execute(self, i, bad, slow=()):
        if i in slow:
            time.sleep(0.5)
        if i in bad:
            raise ValueError(f"bad item {i}")
        return i


@remote
class TakesTimeout:
    """A task with its own ``timeout`` keyword argument."""

    def execute(self, seconds, timeout=None):
        time.sleep(seconds)
        return timeout


@remote
class Sized:
    """Returns ``n`` bytes: a result as large as a test needs."""

    def execute(self, n):
        return b"x" * n


@remote(time_limit=30)
class LimitedNoisy:
    """``Failing.noisy`` in a time-limited task's helper process."""

    def execute(self):
        return Failing.__wrapped__().noisy()


@remote(queue="sharded", shards=6)
class ShardedPi:
    """A task type whose queue is spread over six slots of a Redis Cluster."""

    def execute(self, n):
        return math.pi * n
