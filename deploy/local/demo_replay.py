"""What makes the article replay repeatable: keys and data derived from what each write is, and its scale.

* ``key(*parts)``: the ``Idempotency-Key`` of a write, a uuid5 of a fixed namespace and a stable
  description of the write ("branch", 17, ...). Running the demo again on the same state sends the same
  keys with the same bodies, so every service replays its first answer and writes nothing.
* ``seeded(*parts)``: a ``random.Random`` seeded by a description, for demo data that looks random
  (credit codes, ID numbers, names) but is the same on every run. String seeds are hashed with SHA-512
  by ``random``, so they do not depend on ``PYTHONHASHSEED``.
* ``Scale``: how much of the report to replay. ``CHANGAI_DEMO_SCALE=small`` (the default) replays the
  report's counts where they are cheap (658 branches, 65,585 members of 2021, 100 stations, the funds,
  competitions, studios, the reform ledgers) and a dozen training person-times; ``full`` adds the
  ~450,000 members (the earlier ones in branches founded before 2021) and the 134,000 subsidised
  person-times in 5,000 sessions through the bulk roster path.

Switching the scale on one state is additive (``full`` is ``small`` plus its own writes); going back
from ``full`` to ``small`` leaves the full-scale records where they are.
"""

from __future__ import annotations

import os
import random
import uuid
from dataclasses import dataclass

NS = uuid.UUID("5d1c3a8e-7a0b-4f7e-9c52-617274696c65")  # the article replay's own namespace


def key(*parts: object) -> str:
    """The Idempotency-Key of the write described by ``parts`` (the same on every run)."""
    return str(uuid.uuid5(NS, "/".join(str(p) for p in parts)))


def seeded(*parts: object) -> random.Random:
    """A generator whose draws are the same on every run for the same description."""
    return random.Random("/".join(str(p) for p in parts))


@dataclass(frozen=True)
class Scale:
    name: str
    orgs_2021: int = 658  # union organisations founded in 2021 (the three demo branches among them)
    members_2021: int = 65_585  # members who joined in 2021, one bulk import
    stations: int = 100  # outdoor-worker service stations
    earlier_branches: int = 0  # branches founded before 2021 (the report does not count them)
    earlier_members: int = 0  # members who joined before 2021, one more bulk import
    sessions: int = 0  # training sessions recorded through the bulk roster path
    person_times: int = 0  # their person-times (rows of the rosters)
    intake_hires: int = 300  # an enterprise's hires its HR system emits to the intake (one batch request)


SCALES = {
    "small": Scale("small"),
    # ~450,000 members in all (FACTS.md), 65,585 of them joined in 2021; 134,000 person-times Jan-Aug 2021
    # in 5,000 sessions. 440 earlier branches (20 a county) are illustrative: the report gives no number.
    "full": Scale("full", earlier_branches=440, earlier_members=450_000 - 65_585, sessions=5_000, person_times=134_000),
}


def scale_from_env() -> Scale:
    name = os.environ.get("CHANGAI_DEMO_SCALE", "small").strip().lower() or "small"
    if name not in SCALES:
        raise SystemExit(f"CHANGAI_DEMO_SCALE={name!r}: say one of {', '.join(SCALES)}")
    return SCALES[name]
