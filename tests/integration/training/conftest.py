"""Training integration fixtures: a module-wide training app on the real PostgreSQL and Kafka."""
from __future__ import annotations

import pytest

from training_support import running_training


@pytest.fixture(scope="module")
async def training(stack, make_database):
    """(app, client, dsn): one training app per test module, its own database and consumer group."""
    dsn = await make_database("training")
    async with running_training(stack, dsn) as (app, client):
        yield app, client, dsn
