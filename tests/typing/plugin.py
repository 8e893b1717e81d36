"""Plain ``@remote`` under mypy with ``remoteexec.mypy_plugin``: every public method typed.

Checked by tests/test_typing.py with mypy only (pyright has no plugins: ``methods.py`` is
the form it checks). A line ending in ``# type: ignore[CODE]`` is an error mypy must report
there (``warn_unused_ignores`` fails the test on one it misses).
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import date, timedelta
from typing import TypeVar

from typing_extensions import assert_type

from remoteexec import RemoteFuture, RemoteMethod, remote, remote_method

T = TypeVar("T")


@remote
class Invoices:
    LIMIT = 10  # not a method: the proxy gives it as it is

    def due_date(self, d: date) -> date:
        return d + timedelta(days=30)

    def total(self, amounts: list[int], *, discount: int = 0, currency: str = "EUR") -> str:
        return f"{sum(amounts) - discount} {currency}"

    def by_customer(self, customer: str, year: int = 2026) -> dict[str, list[date]]:
        return {customer: [date(year, 1, 1)]}

    async def fetch(self, key: str) -> bytes:
        return key.encode()

    @staticmethod
    def version(major: int) -> str:
        return f"v{major}"

    @classmethod
    def kind(cls, upper: bool = False) -> str:
        return "INVOICES" if upper else "invoices"

    @remote_method  # the plugin types it as @remote_method declares it
    def marked(self, n: int) -> int:
        return n

    def latest(self, items: list[T]) -> T:  # a generic method
        return items[-1]

    @remote_method
    def first(self, items: list[T]) -> T:
        return items[0]


@remote(name="ledger", queue="books")
class Ledger:
    def balance(self, account: str) -> float:
        return 0.0


def calls(d: date) -> None:
    method: RemoteMethod[[date], date] = Invoices.due_date
    assert_type(method(d), date)
    assert_type(Invoices.due_date(d), date)
    assert_type(Invoices.total([1, 2], discount=1, currency="USD"), str)
    assert_type(Invoices.by_customer("acme"), dict[str, list[date]])
    assert_type(Invoices.fetch("k"), bytes)
    assert_type(Invoices.version(2), str)
    assert_type(Invoices.kind(upper=True), str)
    assert_type(Invoices.marked(1), int)
    assert_type(Invoices.latest([d]), date)
    assert_type(Invoices.first(["a"]), str)
    assert_type(Invoices.LIMIT, int)
    assert_type(Ledger.balance("cash"), float)


async def submit_map_options_await(d: date, days: list[date]) -> None:
    assert_type(Invoices.due_date.submit(d), RemoteFuture[date])
    assert_type(Invoices.due_date.map(days), Iterator[date])
    assert_type(list(Invoices.by_customer.map(["a"], [2026])), list[dict[str, list[date]]])
    faster: RemoteMethod[[date], date] = Invoices.due_date.options(timeout=5)
    assert_type(faster.submit(d), RemoteFuture[date])
    assert_type(await Invoices.due_date.submit(d), date)
    assert_type(await Invoices.fetch.submit("k"), bytes)
    assert_type(await Ledger.balance.options(queue="gpu").submit("cash"), float)


def local(invoices: Invoices, d: date) -> None:
    assert_type(invoices.due_date(d), date)  # an instance of the class itself: a local call


def expected_errors(d: date) -> None:
    Invoices.due_date("2026-12-02")  # type: ignore[arg-type]
    Invoices.due_date()  # type: ignore[call-arg]
    Invoices.total([1], rebate=1)  # type: ignore[call-arg]
    Invoices.version("2")  # type: ignore[arg-type]
    Invoices.kind(True, 2)  # type: ignore[call-arg]
    Invoices.latest(d)  # type: ignore[arg-type]
    Invoices.due_date.submit(1)  # type: ignore[arg-type]
    Ledger.balance.options(timeout=1)(3)  # type: ignore[arg-type]
    bad: str = Invoices.due_date(d)  # type: ignore[assignment]
    worse: int = Invoices.by_customer.submit("acme").result()  # type: ignore[assignment]
    worst: str = Invoices.first([d])  # type: ignore[assignment]
    del bad, worse, worst
