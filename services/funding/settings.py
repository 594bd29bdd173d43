"""The funding service's settings (environment, prefix ``CHANGAI_``)."""

from __future__ import annotations

from datetime import date

from pydantic import Field

from shared.settings import Settings


class FundingSettings(Settings):
    service: str = "funding"

    # Pre-job training subsidy (岗前培训 / 以工代训): 300 yuan per person, 800 from the 2021 change.
    # The source report (seed/ningxia-workforce-reform-2021.zh.txt) says the standard was raised
    # "this year" (2021) without a date, so the change date is a setting: CHANGAI_FUNDING_PRE_JOB_CHANGE_DATE.
    funding_pre_job_change_date: date = date(2021, 1, 1)
    # The old 300-yuan standard applies from here (the 2019–2021 skills-upgrading action); before it, no rule.
    funding_pre_job_old_from: date = date(2019, 1, 1)
    # Seed the two pre-job rules at start-up while no rule of that category was set through the API.
    funding_seed_rules: bool = True

    # Subsidies go to registered payees only (PUT /v1/beneficiaries/...); true registers an organiser
    # named in the completion event on the fly (pilots, demos).
    funding_auto_register_organisers: bool = False

    # The subsidy saga: a consumer of training.events in this process.
    funding_subsidy_consumer: bool = True
    funding_subsidy_group: str = Field(default="funding.subsidy", min_length=1)
    funding_training_topic: str = "training.events"

    # Membership's branches, where each is (a consumer of membership.events in this process): a branch
    # named as a payee takes its own region, and another city cannot claim it.
    funding_branch_consumer: bool = True
    funding_branch_group: str = Field(default="funding.branches", min_length=1)
    funding_membership_topic: str = "membership.events"

    # The intake's commands (funding.commands: settlements reported by finance systems).
    funding_commands_consumer: bool = True
    funding_commands_group: str = Field(default="funding.commands", min_length=1)
