"""Fixtures of the intake integration tests: membership and the intake in-process, on fresh databases."""
import pytest

from tests.integration.intake.intake_support import running_intake
from tests.integration.membership.membership_support import running


@pytest.fixture(scope="module")
async def membership(stack, make_database):
    async with running(stack, make_database) as m:
        yield m


@pytest.fixture(scope="module")
async def intake(stack, make_database, membership):
    dsn = await make_database("intake")
    # answers to webhook sources go to a receiver on 127.0.0.1 in these tests
    async with running_intake(stack, dsn, outbound_allow_private=True) as (app, client):
        yield app, client, dsn
