"""The reform service's settings (environment, prefix ``CHANGAI_``), on top of the platform's."""

from __future__ import annotations

from pydantic import Field

from shared.settings import Settings


class ReformSettings(Settings):
    service: str = "reform"

    # Supervision (督办): how often the due-time scan runs, and after how many days without a progress
    # report a task gets a gentle reminder (before it is overdue).
    reform_supervision_interval_s: float = Field(default=60.0, gt=0)
    reform_progress_quiet_days: float = Field(default=30.0, gt=0)
    reform_supervision: bool = True  # false: an API-only replica (another runs the scan; both may, safely)
