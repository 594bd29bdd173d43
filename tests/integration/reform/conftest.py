"""Fixtures of the reform integration tests: the app in-process on a fresh database."""

import pytest

from reform_support import running_reform


@pytest.fixture(scope="module")
async def reform(stack, make_database):
    dsn = await make_database("reform")
    async with running_reform(stack, dsn, reform_supervision=False) as (app, client):
        yield app, client, dsn
