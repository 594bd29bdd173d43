"""Fixtures of membership's integration tests: the app in-process on a fresh database."""
import pytest

from tests.integration.membership.membership_support import running


@pytest.fixture(scope="module")
async def membership(stack, make_database):
    async with running(stack, make_database) as m:
        yield m
