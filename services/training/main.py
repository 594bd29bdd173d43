"""Training service: wiring and entry point.

python -m services.training api               # the HTTP API (+ outbox relay + member read model)
python -m services.training rebuild-members   # empty the member read model and replay membership.events
"""

from __future__ import annotations

import asyncio
import sys

from services.training.api import router
from services.training.consumers import commands_part, read_model_part, rebuild
from services.training.settings import TrainingSettings
from shared.http import create_app, serve


def build_app(settings: TrainingSettings | None = None):
    settings = settings or TrainingSettings()
    parts = [read_model_part(settings.members_group, settings.members_topic)] if settings.members_consumer else []
    if settings.consume_commands:
        parts.append(commands_part(settings.commands_group_id))
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
