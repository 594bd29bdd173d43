"""Training service: wiring and entry point.

python -m services.training api               # the HTTP API (+ outbox relay + member read model)
python -m services.training rebuild-members   # empty the member read model and replay membership.events
"""

from __future__ import annotations

import asyncio
import sys

from services.training.api import router
from services.training.consumers import read_model_part, rebuild
from shared.http import create_app, serve
from shared.settings import Settings


class TrainingSettings(Settings):
    service: str = "training"
    http_port: int = 8002
    # Consumer group of the member read model; the generation is appended (``training-members-g1``).
    members_group: str = "training-members"
    # The topic the read model is built from (a setting so a test or a bench can use a private copy).
    members_topic: str = "membership.events"
    # Off only for tools that must not consume (e.g. a benchmark seeding the read model itself).
    members_consumer: bool = True


def build_app(settings: TrainingSettings | None = None):
    settings = settings or TrainingSettings()
    parts = [read_model_part(settings.members_group, settings.members_topic)] if settings.members_consumer else []
    return create_app(
        service="training",
        settings=settings,
        routers=[router],
        parts=parts,
        title="Changai training (职业技能培训、竞赛、创新)",
        description="Programmes, sessions, enrolments and person-times, certificates, competitions, "
        "innovation studios and training bases; a read model of members.",
    )


def main(argv: list[str]) -> None:
    role = argv[0] if argv else "api"
    settings = TrainingSettings()
    if role == "api":
        serve(build_app(settings), settings)
    elif role == "rebuild-members":
        from shared import migrate

        async def run() -> None:
            await migrate.prepare(settings, "training")
            await rebuild(
                settings.database_url, settings.kafka_bootstrap, settings.members_group, topic=settings.members_topic
            )

        asyncio.run(run())
    else:
        raise SystemExit(f"unknown role {role!r}; use: api | rebuild-members")


if __name__ == "__main__":
    main(sys.argv[1:])
