"""Fixtures of the integration tests: a Temporal service (tests/temporal.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest


@pytest.fixture(scope="session")
def temporal_address() -> Iterator[str]:
    """A Temporal dev server with fairness on, for the session: its host:port. No binary and
    no BACKTEST_TEST_TEMPORAL_ADDRESS is a failure that says what to install, never a skip."""
    from tests import temporal

    try:
        with temporal.server() as address:
            yield address
    except temporal.TemporalMissing as e:
        pytest.fail(str(e), pytrace=False)
