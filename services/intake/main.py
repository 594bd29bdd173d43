"""Event intake: wiring and entry point (``python -m services.intake api``).

One process serves the HTTP intake (CloudEvents binding and the sources' registry), runs the outbox relay
that publishes the commands, consumes the owning services' outcomes, and reads the Kafka intake topics as
a consumer group. Replicas share all of it (outbox lanes, consumer groups).
"""

from __future__ import annotations

import sys

from fastapi import FastAPI

from services.intake.api import router
from services.intake.consumers import KafkaIntake, outcome_consumer
from services.intake.replies import replies_part
from services.intake.settings import IntakeSettings
from shared.crypto import FieldCipher
from shared.events.intake import CommandKeys
from shared.http import create_app, serve


def keys_part(settings: IntakeSettings):
    async def keys(app: FastAPI):
        app.state.keys = CommandKeys(settings.data_key_bytes())
        app.state.known_sources = {}  # callers' registrations seen lately (usecases.accept_from_caller)
        app.state.cipher = FieldCipher(settings.data_key_bytes(), "intake")  # sources' reply secrets
        return None

    return keys


def outcomes_part(settings: IntakeSettings):
    async def outcomes(app: FastAPI):
        if not settings.intake_consume_outcomes:
            return None
        consumer = outcome_consumer(app.state.db, settings.kafka_bootstrap, settings.intake_outcomes_group_id)
        consumer.start()
        app.state.outcomes = consumer
        return consumer.stop

    return outcomes


def kafka_intake_part(settings: IntakeSettings):
    async def kafka_intake(app: FastAPI):
        if not settings.intake_consume_kafka:
            return None
        intake = KafkaIntake(app.state.db, settings, app.state.keys)
        intake.start()
        app.state.kafka_intake = intake
        return intake.stop

    return kafka_intake


def build_app(settings: IntakeSettings | None = None) -> FastAPI:
    settings = settings or IntakeSettings()
    return create_app(
        service="intake",
        settings=settings,
        routers=[router],
        title="Changai event intake (事件接入)",
        description="Upstream systems emit CloudEvents (HTTP binding or Kafka intake topics); each is "
        "checked, deduplicated, turned into a command for the owning service and answered.",
        parts=[keys_part(settings), outcomes_part(settings), kafka_intake_part(settings), replies_part(settings)],
    )


def main(argv: list[str]) -> None:
    role = argv[0] if argv else "api"
    if role != "api":
        raise SystemExit(f"unknown role {role!r}; use: api")
    settings = IntakeSettings()
    serve(build_app(settings), settings)


if __name__ == "__main__":
    main(sys.argv[1:])
