"""Fixtures of the funding integration tests (helpers live in funding_support.py)."""
import pytest

from funding_support import running_funding


@pytest.fixture(scope="module")
async def funding(stack, make_database):
    """A module's funding app (no subsidy consumer): (app, client, dsn)."""
    dsn = await make_database("funding")
    async with running_funding(stack, dsn) as (app, client):
        yield app, client, dsn
