"""The pytest plugin: a ``remoteexec_farm`` fixture (``remoteexec.testing.farm``).

Load it in the project's root ``conftest.py`` (or with ``pytest -p remoteexec.pytest_plugin``)::

    pytest_plugins = ["remoteexec.pytest_plugin"]

It is not loaded by itself when remoteexec is installed (as Celery's plugin is not, since
5.0): pytest would import remoteexec in every project of the environment. Then::

    def test_invoice(remoteexec_farm):              # a worker thread on memory://
        assert invoice_total(order) == 42

    @pytest.mark.remoteexec_farm(eager=True, imports=["myapp.tasks"])
    def test_invoice_eager(remoteexec_farm):        # calls run in the test's thread
        assert invoice_total(order) == 42

The marker's arguments are those of ``farm``; so are those of a dict given by indirect
parametrization, which may run one test in several modes::

    @pytest.mark.parametrize("remoteexec_farm", [{}, {"eager": True}], indirect=True)

The farm itself (``remoteexec.testing``) is imported only when a test asks for the fixture.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from remoteexec.client import Client

_MARKER = "remoteexec_farm"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        f"{_MARKER}(**options): the options of remoteexec.testing.farm for the "
        f"{_MARKER} fixture (eager=True, imports=[...], threads=N, secret=...)",
    )


@pytest.fixture
def remoteexec_farm(request: pytest.FixtureRequest) -> Iterator[Client]:
    """A client on a private in-process farm, current for the test (``farm``'s docs)."""
    from remoteexec.testing import farm

    marker = request.node.get_closest_marker(_MARKER)
    if marker is not None and marker.args:
        raise TypeError(f"@pytest.mark.{_MARKER} takes keyword arguments only")
    options = {} if marker is None else dict(marker.kwargs)
    options.update(getattr(request, "param", None) or {})
    with farm(**options) as client:
        yield client
