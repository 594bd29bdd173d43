"""Reset the projection and replay every topic from the beginning.

    python -m services.projection rebuild     # with the workers stopped; then start them again

The projection's whole state lives in Kafka: its tables' changelog topics (which
also hold each partition's resume mark) and the Faust consumer group. Deleting
them makes the next worker start from empty tables and read every domain and
dead-letter topic from offset 0; the domain topics keep events forever, so the
figures come back exactly as before (the tests check they are identical).

The command refuses while a worker is still a member of the group: a running
worker would write its old state back.
"""

from __future__ import annotations

import argparse
import asyncio
import time

from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.protocol.admin import DeleteGroupsRequest

from services.projection.main import changelog_topics
from services.projection.settings import ProjectionSettings
from shared.kafka import connection

GROUP_ID_NOT_FOUND, NON_EMPTY_GROUP = 69, 68


class RebuildRefused(RuntimeError):
    pass


async def active_members(admin: AIOKafkaAdminClient, group: str) -> int:
    for response in await admin.describe_consumer_groups([group]):
        for g in response.groups:
            if g[1] == group:
                return len(g[5])
    return 0


async def rebuild(settings: ProjectionSettings, *, timeout: float = 60) -> list[str]:
    """Delete the projection's changelog topics and consumer group; returns what was deleted."""
    app_id = settings.projection_app_id
    admin = AIOKafkaAdminClient(**connection(settings.kafka_bootstrap), request_timeout_ms=15000)
    await admin.start()
    try:
        members = await active_members(admin, app_id)
        if members:
            raise RebuildRefused(f"{members} projection worker(s) still in group {app_id!r}: stop them first")
        deleted = []
        existing = set(await admin.list_topics())
        doomed = [t for t in (*changelog_topics(app_id), f"{app_id}-__assignor-__leader") if t in existing]
        if doomed:
            await admin.delete_topics(doomed)
            deleted += [f"topic {t}" for t in doomed]
        coordinator = await admin.find_coordinator(app_id)
        # aiokafka's admin client has no call that deletes a consumer group (docs/platform.md lists this reach)
        response = await admin._send_request(DeleteGroupsRequest([app_id]), coordinator)  # noqa: SLF001 — see above
        for _group, error in response.results:
            if error == NON_EMPTY_GROUP:
                raise RebuildRefused(f"group {app_id!r} is not empty: stop the projection workers first")
            if error not in (0, GROUP_ID_NOT_FOUND):
                raise RuntimeError(f"deleting group {app_id!r} failed with Kafka error {error}")
            if error == 0:
                deleted.append(f"consumer group {app_id}")
        deadline = time.monotonic() + timeout
        while set(doomed) & set(await admin.list_topics()):  # deletion is asynchronous on the broker
            if time.monotonic() > deadline:
                raise RuntimeError(f"topics {doomed} still exist {timeout:.0f} s after deletion")
            await asyncio.sleep(0.2)
        return deleted
    finally:
        await admin.close()


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m services.projection rebuild",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.parse_args(argv)
    settings = ProjectionSettings()
    try:
        deleted = asyncio.run(rebuild(settings))
    except RebuildRefused as exc:
        print(f"rebuild refused: {exc}")
        return 2
    print(
        f"projection {settings.projection_app_id!r} reset: "
        + (", ".join(deleted) if deleted else "nothing to delete (never ran)")
    )
    print("start the workers again (python -m services.projection worker): they replay every topic from offset 0")
    return 0
