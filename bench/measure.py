"""The measurement loops, their time bounds, and the figures they collect.

A *system* is anything with ``name``, ``scenarios`` (letters among ABCD), ``start(P)``
(start P worker processes on an empty broker, return their pids), ``stop()``,
``call(n)`` (one blocking call) and ``run_many(range)`` (a batch, results in order).
One repetition of a system runs A, B and D on one worker process, then C on two, then
(scenario S, remoteexec only) B's batch and an I/O task's on four; ``extra.py`` has what
is measured beside them.
"""

from __future__ import annotations

import math
import signal
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any

from .extra import cost
from .servers import peak_rss_mib

METRICS = ("a_p50_us", "a_p90_us", "a_p99_us", "b_calls_s", "c_calls_s", "d_peak_mib")


@dataclass(frozen=True)
class Sizes:
    """How many calls each scenario makes, and how long any step may take."""

    latency_calls: int = 2000
    latency_warmup: int = 200
    batch_calls: int = 10_000
    batch_warmup: int = 500
    bound: float = 180.0  # seconds for one start, one measurement or one stop

    def scaled(self, factor: float) -> Sizes:
        return replace(
            self,
            latency_calls=max(50, int(self.latency_calls * factor)),
            latency_warmup=max(20, int(self.latency_warmup * factor)),
            batch_calls=max(200, int(self.batch_calls * factor)),
        )


class OutOfTime(Exception):
    """A step ran past its time bound."""


@contextmanager
def time_bound(seconds: float, what: str) -> Iterator[None]:
    """Interrupt the block (in the main thread) with ``OutOfTime`` after ``seconds``."""

    def on_alarm(signum: int, frame: Any) -> None:
        raise OutOfTime(f"{what} took over {seconds:g} s")

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def progress(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def percentile(ordered: list[float], q: float) -> float:
    """The ``q`` quantile (0..1) of sorted values, interpolated linearly."""
    pos = q * (len(ordered) - 1)
    low = math.floor(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def median(values: list[float]) -> float:
    return percentile(sorted(values), 0.5)


def _check(value: Any, n: int) -> None:
    if not math.isclose(value, math.pi * n, rel_tol=1e-12, abs_tol=1e-12):
        raise AssertionError(f"wrong result for n={n}: {value!r}")


def latencies_us(
    system: Any, calls: int, warmup: int, call: Callable[[int], Any] | None = None
) -> tuple[list[float], float]:
    """Sequential calls after a warm-up: sorted latencies in µs, and the loop's seconds."""
    call = call or system.call
    for n in range(warmup):
        _check(call(n), n)
    clock = time.perf_counter_ns
    out = [0.0] * calls
    started = clock()
    for n in range(calls):
        t0 = clock()
        value = call(n)
        out[n] = (clock() - t0) / 1000
        _check(value, n)
    elapsed = (clock() - started) / 1e9
    return sorted(out), elapsed


def throughput(system: Any, calls: int, run: Callable[[range], list[Any]] | None = None) -> float:
    """Calls per second of one ``run_many`` batch (results checked afterwards)."""
    started = time.perf_counter()
    values = (run or system.run_many)(range(calls))
    elapsed = time.perf_counter() - started
    if len(values) != calls:
        raise AssertionError(f"{len(values)} results for {calls} calls")
    for n in (0, calls // 2, calls - 1):
        _check(values[n], n)
    return calls / elapsed


@dataclass
class Results:
    """Per system, per metric: one figure per repetition; and the errors met."""

    figures: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    errors: dict[str, list[str]] = field(default_factory=dict)

    def add(self, system: str, metric: str, value: float) -> None:
        self.figures.setdefault(system, {}).setdefault(metric, []).append(value)

    def error(self, system: str, text: str) -> None:
        self.errors.setdefault(system, []).append(text)

    def median(self, system: str, metric: str) -> float | None:
        values = self.figures.get(system, {}).get(metric)
        return median(values) if values else None


def run_rep(system: Any, sizes: Sizes, results: Results, label: str) -> None:
    """One repetition of ``system``'s scenarios; failures are recorded, not raised."""
    name, scenarios, bound = system.name, system.scenarios, sizes.bound

    def step(what: str, fn: Callable[[], Any]) -> Any:
        try:
            with time_bound(bound, f"{name} {what}"):
                return fn()
        except (Exception, OutOfTime) as exc:
            text = f"{label} {what}: {type(exc).__name__}: {exc}"
            if hasattr(system, "diagnose"):
                text += system.diagnose()
            results.error(name, text)
            progress(f"[{label}] {name} {what} FAILED: {type(exc).__name__}: {exc}")
            return None

    if set("ABD") & set(scenarios):
        pids = step("start 1 worker", lambda: system.start(1))
        try:
            if pids:
                _one_worker(system, sizes, results, label, step, pids[0])
        finally:
            step("stop", system.stop)
    if "C" in scenarios:
        started = step("start 2 workers", lambda: system.start(2))
        try:
            if started:
                _run_throughput(system, sizes, results, label, step, "c_calls_s", "C")
        finally:
            step("stop", system.stop)
    if "S" in scenarios:
        started = step("start 4 workers", lambda: system.start(4))
        try:
            if started:
                _scaling(system, sizes, results, label, step)
        finally:
            step("stop", system.stop)


def _scaling(system: Any, sizes: Sizes, results: Results, label: str, step: Any) -> None:
    """B's batch on 4 worker processes, then a batch of a task sleeping 1 ms."""
    _run_throughput(system, sizes, results, label, step, "c4_calls_s", "C4")
    calls = max(200, sizes.batch_calls // 2)
    rate = step("IO4", lambda: throughput(system, calls, system.run_many_io))
    if rate is not None:
        results.add(system.name, "io4_calls_s", rate)
        progress(f"[{label}] {system.name} IO4: {rate:,.0f} calls/s (1 ms I/O, 4 processes)")


def _one_worker(
    system: Any, sizes: Sizes, results: Results, label: str, step: Any, pid: int
) -> None:
    """A, then B, then D, on one worker process."""
    if "A" in system.scenarios:
        _run_a(system, sizes, results, label, step)
    if "B" in system.scenarios:
        _run_throughput(system, sizes, results, label, step, "b_calls_s", "B", [pid])
    if "D" in system.scenarios and (peak := step("D", lambda: _peak(pid))):
        results.add(system.name, "d_peak_mib", peak)
        progress(f"[{label}] {system.name} D: worker peak RSS {peak:.1f} MiB")


def _peak(pid: int) -> float:
    try:
        return peak_rss_mib(pid)
    except FileNotFoundError:
        raise RuntimeError(f"worker process {pid} died during the run") from None


def _run_a(system: Any, sizes: Sizes, results: Results, label: str, step: Any) -> None:
    name = system.name
    if hasattr(system, "submit_call"):  # the same through a future: submit(n).result()
        both = step("A, and A via a future", lambda: _a_in_turn(system, sizes))
        if both is None:
            return
        got, future = both
        results.add(name, "a_submit_p50_us", percentile(future, 0.5))
    else:
        got = step("A", lambda: latencies_us(system, sizes.latency_calls, sizes.latency_warmup))
        if got is None:
            return
    ordered, elapsed = got
    p50, p90, p99 = (percentile(ordered, q) for q in (0.5, 0.9, 0.99))
    for metric, value in zip(METRICS[:3], (p50, p90, p99), strict=True):
        results.add(name, metric, value)
    line = f"p50 {p50:.0f} µs, p90 {p90:.0f} µs, p99 {p99:.0f} µs over {len(ordered)} calls"
    if "B" not in system.scenarios:  # the simple loop: B is its rate, one call outstanding
        results.add(name, "b_calls_s", len(ordered) / elapsed)
        line += f" ({len(ordered) / elapsed:,.0f} calls/s, one outstanding)"
    progress(f"[{label}] {name} A: {line}")


def _a_in_turn(
    system: Any, sizes: Sizes, turns: int = 10
) -> tuple[tuple[list[float], float], list[float]]:
    """A's calls, and half as many through ``submit(n).result()``, in ``turns`` blocks
    taken in turn, so that both meet the same spells of the machine: A's sorted latencies
    and loop seconds, and the future's sorted latencies."""
    a: list[float] = []
    future: list[float] = []
    seconds = 0.0
    for turn in range(turns):
        warm = turn == 0
        got, elapsed = latencies_us(
            system, sizes.latency_calls // turns, sizes.latency_warmup if warm else 0
        )
        a += got
        seconds += elapsed
        half, half_warm = sizes.latency_calls // 2 // turns, sizes.latency_warmup // 2
        future += latencies_us(system, half, half_warm if warm else 0, system.submit_call)[0]
    return (sorted(a), seconds), sorted(future)


def _run_throughput(
    system: Any,
    sizes: Sizes,
    results: Results,
    label: str,
    step: Any,
    metric: str,
    title: str,
    pids: list[int] | None = None,
) -> None:
    """A batch after a warm-up; with ``pids`` (the workers), its cost per call too."""
    if step(f"{title} warm-up", lambda: throughput(system, sizes.batch_warmup)) is None:
        return

    def timed() -> float:
        if pids is None:
            return throughput(system, sizes.batch_calls)
        add = lambda metric, value: results.add(system.name, metric, value)  # noqa: E731
        with cost(system, pids, sizes.batch_calls, add):
            return throughput(system, sizes.batch_calls)

    rate = step(title, timed)
    if rate is not None:
        results.add(system.name, metric, rate)
        workers = {"C": 2, "C4": 4}.get(title, 1)
        progress(
            f"[{label}] {system.name} {title}: {rate:,.0f} calls/s "
            f"({sizes.batch_calls} calls, {workers} worker process(es))"
        )
