"""Membership's settings, in one place: the platform's (``shared.settings``) plus its own, same prefix."""

from __future__ import annotations

from shared.settings import Settings


class MembershipSettings(Settings):
    """The platform's settings plus membership's own (same ``CHANGAI_`` prefix)."""

    consume_certificates: bool = True  # CHANGAI_CONSUME_CERTIFICATES
    certificates_group_id: str = "membership-certificates"
    consume_commands: bool = True  # CHANGAI_CONSUME_COMMANDS: the intake's membership.commands
    commands_group_id: str = "membership-commands"
    import_batch_rows: int = 5000  # rows per import transaction
    import_writers: int = 2  # import transactions at once (each on its own connection)
    lookup_rate_per_minute: int = 30  # POST /v1/members:lookup per caller (token subject) a minute
