"""The training service's settings (environment, prefix ``CHANGAI_``), on top of the platform's."""

from __future__ import annotations

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
    # The intake's commands (training.commands: attendance reported by training providers).
    consume_commands: bool = True
    commands_group_id: str = "training-commands"
