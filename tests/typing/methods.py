"""``@remote_method``: typed for mypy and pyright alike, with no plugin.

Checked by tests/test_typing.py. A line ending in ``# type: ignore[CODE]  # pyright:
ignore[RULE]`` is an error both checkers must report there: mypy runs with
``warn_unused_ignores`` and pyright with ``reportUnnecessaryTypeIgnoreComment``, so one
they miss fails the test.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import date, timedelta
from typing import Any

from typing_extensions import assert_type

from remoteexec import RemoteFuture, RemoteMethod, remote, remote_method


@remote(queue="invoices", timeout=30)
class Invoices:
    @remote_method
    def due_date(self, d: date) -> date:
        return d + timedelta(days=30)

    @remote_method
    def total(self, amounts: list[int], *, discount: int = 0, currency: str = "EUR") -> str:
        return f"{sum(amounts) - discount} {currency}"

    @remote_method
    def by_customer(self, customer: str, year: int = 2026) -> dict[str, list[date]]:
        return {customer: [date(year, 1, 1)]}

    @remote_method
    async def fetch(self, key: str) -> bytes:
        return key.encode()


def calls(d: date) -> None:
    method: RemoteMethod[[date], date] = Invoices.due_date
    assert_type(method(d), date)
    assert_type(Invoices.due_date(d), date)
    assert_type(Invoices.total([1, 2]), str)
    assert_type(Invoices.total([1, 2], discount=1, currency="USD"), str)
    assert_type(Invoices.by_customer("acme"), dict[str, list[date]])
    assert_type(Invoices.by_customer(customer="acme", year=2025), dict[str, list[date]])
    assert_type(Invoices.fetch("k"), bytes)  # what the coroutine returns, not a coroutine


def submit_map_options(d: date, days: list[date]) -> None:
    assert_type(Invoices.due_date.submit(d), RemoteFuture[date])
    assert_type(Invoices.due_date.submit(d).result(), date)
    assert_type(Invoices.total.submit([1], discount=2), RemoteFuture[str])
    assert_type(Invoices.fetch.submit("k"), RemoteFuture[bytes])
    assert_type(Invoices.due_date.map(days), Iterator[date])
    assert_type(
        list(Invoices.by_customer.map(["a", "b"], [2025, 2026])), list[dict[str, list[date]]]
    )
    faster: RemoteMethod[[date], date] = Invoices.due_date.options(timeout=5)
    assert_type(faster(d), date)
    assert_type(Invoices.total.options(queue="gpu", max_attempts=2)([3]), str)
    assert_type(Invoices.due_date.options(timeout=None).submit(d), RemoteFuture[date])
    assert_type(Invoices.due_date.send(d), str)
    assert_type(Invoices.total.options(max_attempts=2).send([1], discount=2), str)


async def awaits(d: date) -> None:
    assert_type(await Invoices.due_date.submit(d), date)
    assert_type(await Invoices.by_customer.submit("acme"), dict[str, list[date]])
    assert_type(await Invoices.fetch.submit("k"), bytes)


async def local(invoices: Invoices, d: date) -> None:
    # An instance of the class itself (``Invoices.__wrapped__()``): its methods run here.
    assert_type(invoices.due_date(d), date)
    assert_type(invoices.total([1]), str)
    assert_type(await invoices.fetch("k"), bytes)  # the method's own coroutine


def expected_errors(d: date) -> None:
    Invoices.due_date("2026-12-02")  # type: ignore[arg-type]  # pyright: ignore[reportArgumentType]
    Invoices.due_date(d, d)  # type: ignore[call-arg]  # pyright: ignore[reportCallIssue]
    Invoices.due_date()  # type: ignore[call-arg]  # pyright: ignore[reportCallIssue]
    Invoices.total([1], discount="1")  # type: ignore[arg-type]  # pyright: ignore[reportArgumentType]
    Invoices.total([1], rebate=1)  # type: ignore[call-arg]  # pyright: ignore[reportCallIssue]
    Invoices.due_date.submit("2026")  # type: ignore[arg-type]  # pyright: ignore[reportArgumentType]
    Invoices.due_date.options(timeout=5)(1)  # type: ignore[arg-type]  # pyright: ignore[reportArgumentType]
    Invoices.due_date.options(priority=2)  # type: ignore[call-arg]  # pyright: ignore[reportCallIssue]
    bad: str = Invoices.due_date(d)  # type: ignore[assignment]  # pyright: ignore[reportAssignmentType]
    worse: int = Invoices.total.submit([1]).result()  # type: ignore[assignment]  # pyright: ignore[reportAssignmentType]
    for day in Invoices.due_date.map([d]):
        day.upper()  # type: ignore[attr-defined]  # pyright: ignore[reportAttributeAccessIssue]
    anything: Any = (bad, worse)
    del anything
