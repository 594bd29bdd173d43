"""The catalogue of metrics the projection exports: one entry per metric family.

Every family has an internal id (the key in the projection's tables), the exported
Prometheus name, its type, help text and bounded label names. Money is kept in
integer fen in the tables and exported in yuan (``scale=0.01``), per the
Prometheus convention of base units in the name (``_yuan``).

Where a family's value comes from:

* ``counter`` / ``delta``: sums of per-event contributions kept per source
  partition in the ``counters`` table (``delta`` may go down: a gauge such as
  active members, kept as joined − left ± transfers);
* ``max``: the largest value seen per partition (last event time);
* ``aggregate``: a count of aggregates (one record per aggregate id in the
  ``aggregates`` table) in a given state, e.g. active branches by region;
* ``derived``: computed at scrape time from other families (funds remaining);
* ``histogram``: bucket counts (non-cumulative, per bucket index) and a sum.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Family:
    fid: str
    name: str
    kind: str  # counter | delta | max | aggregate | derived | histogram
    help: str
    labels: tuple[str, ...]
    scale: float = 1.0
    internal: bool = False  # kept in the tables, exported only as part of another family

    @property
    def prometheus_type(self) -> str:
        if self.kind == "counter":
            return "counter"
        if self.kind == "histogram":
            return "histogram"
        return "gauge"


YUAN = 0.01  # the tables hold fen; the metrics are in yuan
PLACE = ("region", "city")

_FAMILIES: tuple[Family, ...] = (
    # -- membership ---------------------------------------------------------------
    Family(
        "branches",
        "changai_union_branches",
        "aggregate",
        "Union branches (基层工会) now active, by county (region), city and kind",
        ("region", "city", "kind"),
    ),
    Family(
        "branches_established",
        "changai_union_branches_established_total",
        "counter",
        "Union branches established (新建工会组织), by founding year",
        (*PLACE, "kind", "year"),
    ),
    Family(
        "branches_closed",
        "changai_union_branches_closed_total",
        "counter",
        "Union branches merged or dissolved",
        (*PLACE, "kind", "outcome"),
    ),
    Family(
        "members",
        "changai_union_members",
        "delta",
        "Union members (会员) now active, by county, city and employment form",
        (*PLACE, "employment_form"),
    ),
    Family(
        "members_joined",
        "changai_union_members_joined_total",
        "counter",
        "Members who joined (入会), by year of joining",
        (*PLACE, "employment_form", "year"),
    ),
    Family(
        "member_transfers",
        "changai_union_member_transfers_total",
        "counter",
        "Member transfers between branches (转会): direction=in at the receiving county, out at the leaving one",
        (*PLACE, "direction", "year"),
    ),
    Family(
        "members_left",
        "changai_union_members_left_total",
        "counter",
        "Members who left the union (退会), by year",
        (*PLACE, "employment_form", "year"),
    ),
    Family(
        "members_lapsed",
        "changai_union_members_lapsed_total",
        "counter",
        "Memberships that lapsed, by year",
        (*PLACE, "employment_form", "year"),
    ),
    Family(
        "skill_changes",
        "changai_union_member_skill_level_changes_total",
        "counter",
        "Members' skill level changes, by the new level (1 高级技师 … 5 初级工)",
        (*PLACE, "level"),
    ),
    Family(
        "stations",
        "changai_service_stations",
        "delta",
        "Outdoor-worker service stations (户外劳动者服务站点) now open",
        PLACE,
    ),
    Family(
        "stations_opened",
        "changai_service_stations_opened_total",
        "counter",
        "Service stations opened, by year",
        (*PLACE, "year"),
    ),
    # -- training -----------------------------------------------------------------
    Family(
        "programmes",
        "changai_training_programmes_total",
        "counter",
        "Training programmes (培训项目) registered",
        ("category", "provider_kind"),
    ),
    Family(
        "sessions",
        "changai_training_sessions",
        "aggregate",
        "Training sessions (培训班) by status",
        (*PLACE, "category", "status"),
    ),
    Family(
        "sessions_completed",
        "changai_training_sessions_completed_total",
        "counter",
        "Training sessions completed (结业), by subsidy category and year",
        (*PLACE, "category", "year"),
    ),
    Family(
        "person_times",
        "changai_training_person_times_total",
        "counter",
        "Training person-times (人次) of completed sessions, by subsidy category and year",
        (*PLACE, "category", "year"),
    ),
    Family(
        "persons_passed",
        "changai_training_persons_passed_total",
        "counter",
        "Trainees who passed, in completed sessions",
        (*PLACE, "category", "year"),
    ),
    Family(
        "eligible_persons",
        "changai_training_subsidy_eligible_persons_total",
        "counter",
        "Subsidy-eligible persons (active members who passed) in completed sessions",
        (*PLACE, "category", "year"),
    ),
    Family("enrolments", "changai_training_enrolments_total", "counter", "Enrolments (报名)", (*PLACE, "category")),
    Family(
        "enrolment_outcomes",
        "changai_training_enrolment_outcomes_total",
        "counter",
        "Enrolment steps: attended, passed, failed, withdrawn",
        ("outcome",),
    ),
    Family(
        "certificates",
        "changai_training_certificates_issued_total",
        "counter",
        "Vocational skill level certificates (职业技能等级证书) issued, by level and year",
        (*PLACE, "level", "year"),
    ),
    Family(
        "competitions",
        "changai_competitions",
        "aggregate",
        "Competitions (劳动竞赛 labour / 职业技能大赛 skills) by status",
        ("kind", "tier", *PLACE, "year", "status"),
    ),
    Family(
        "competitions_announced",
        "changai_competitions_announced_total",
        "counter",
        "Competitions announced, by kind, tier and year",
        ("kind", "tier", *PLACE, "year"),
    ),
    Family(
        "participants",
        "changai_competition_participants_total",
        "counter",
        "Workers taking part in competitions (参赛职工), by kind, tier and year",
        ("kind", "tier", *PLACE, "year"),
    ),
    Family("winners", "changai_competition_winners_total", "counter", "Winners published", ("kind", "tier", "year")),
    Family(
        "studios",
        "changai_studios",
        "aggregate",
        "Innovation studios (创新工作室), training bases (培训基地) and skill-master studios now recognised",
        ("kind", "level", *PLACE),
    ),
    Family(
        "studios_recognised",
        "changai_studios_recognised_total",
        "counter",
        "Studios and training bases recognised, by year",
        ("kind", "level", *PLACE, "year"),
    ),
    Family(
        "studio_evaluations",
        "changai_studio_evaluations_total",
        "counter",
        "Studio evaluations by rating",
        ("kind", "rating"),
    ),
    # -- funding ------------------------------------------------------------------
    Family(
        "fund_amount",
        "changai_funds_amount_yuan",
        "delta",
        "Money put into funds (资金来源): opened plus top-ups, by source kind and fiscal year",
        ("source_kind", "year"),
        YUAN,
    ),
    Family(
        "fund_allocated",
        "changai_funds_allocated_yuan",
        "delta",
        "Money of funds granted (资金安排), less revoked remainders",
        ("source_kind", "year"),
        YUAN,
    ),
    Family(
        "fund_disbursed",
        "changai_funds_disbursed_yuan",
        "delta",
        "Money of funds paid out (拨付)",
        ("source_kind", "year"),
        YUAN,
    ),
    Family(
        "fund_returned",
        "changai_funds_returned_yuan",
        "delta",
        "Unspent money returned when funds closed",
        ("source_kind", "year"),
        YUAN,
    ),
    Family(
        "fund_remaining",
        "changai_funds_remaining_yuan",
        "derived",
        "Money of funds not yet granted: amount − allocated − returned",
        ("source_kind", "year"),
        YUAN,
    ),
    Family("funds", "changai_funds", "delta", "Funds by status (open, closed)", ("source_kind", "year", "status")),
    Family(
        "grants",
        "changai_grants_approved_total",
        "counter",
        "Grants approved, by beneficiary kind (project, studio, training base, branch, enterprise)",
        ("source_kind", "year", "beneficiary_kind"),
    ),
    Family(
        "grants_yuan",
        "changai_grants_approved_yuan_total",
        "counter",
        "Money granted",
        ("source_kind", "year", "beneficiary_kind"),
        YUAN,
    ),
    Family(
        "grants_revoked",
        "changai_grants_revoked_total",
        "counter",
        "Grants revoked",
        ("source_kind", "year", "beneficiary_kind"),
    ),
    Family(
        "grants_released_yuan",
        "changai_grants_released_yuan_total",
        "counter",
        "Unpaid grant money released back to funds",
        ("source_kind", "year", "beneficiary_kind"),
        YUAN,
    ),
    Family(
        "disbursements",
        "changai_disbursements_total",
        "counter",
        "Payments under grants (拨付)",
        ("source_kind", "year", "beneficiary_kind"),
    ),
    Family(
        "disbursements_yuan",
        "changai_disbursements_yuan_total",
        "counter",
        "Money paid under grants",
        ("source_kind", "year", "beneficiary_kind"),
        YUAN,
    ),
    Family(
        "subsidies_claimed",
        "changai_subsidies_claimed_total",
        "counter",
        "Training subsidy claims",
        (*PLACE, "category"),
    ),
    Family(
        "subsidies_paid",
        "changai_subsidies_paid_total",
        "counter",
        "Training subsidy claims paid",
        (*PLACE, "category", "source_kind", "year"),
    ),
    Family(
        "subsidies_paid_yuan",
        "changai_subsidies_paid_yuan_total",
        "counter",
        "Training subsidies paid",
        (*PLACE, "category", "source_kind", "year"),
        YUAN,
    ),
    Family(
        "subsidies_paid_persons",
        "changai_subsidies_paid_persons_total",
        "counter",
        "Persons whose training subsidy was paid",
        (*PLACE, "category", "year"),
    ),
    Family(
        "subsidies_rejected",
        "changai_subsidies_rejected_total",
        "counter",
        "Training subsidy claims rejected, by reason",
        (*PLACE, "category", "reason"),
    ),
    Family(
        "subsidies_rejected_yuan",
        "changai_subsidies_rejected_yuan_total",
        "counter",
        "Training subsidy money claimed and rejected",
        ("category", "reason"),
        YUAN,
    ),
    # -- notices ------------------------------------------------------------------
    Family(
        "notices",
        "changai_notices_total",
        "counter",
        "Notices (通知) delivered or failed after the last attempt, by channel",
        ("channel", "outcome"),
    ),
    Family(
        "notice_attempts",
        "changai_notice_delivery_attempts_total",
        "counter",
        "Delivery attempts of finished notices",
        ("channel", "outcome"),
    ),
    Family(
        "notice_latency",
        "changai_notice_delivery_latency_seconds",
        "histogram",
        "From the domain event to the receiver's acknowledgement",
        ("channel",),
    ),
    Family(
        "notice_latency_sum",
        "changai_notice_delivery_latency_seconds_sum",
        "counter",
        "Sum of the latencies, in milliseconds",
        ("channel",),
        internal=True,
    ),
    Family(
        "channel_pauses",
        "changai_notifier_channel_pauses_total",
        "counter",
        "Channels paused because they kept failing",
        ("channel",),
    ),
    Family("channels_paused", "changai_notifier_channels_paused", "aggregate", "Channels paused now", ("channel",)),
    # -- reform coordination (改革协调): units by name (22 of them), never by id ---------------
    Family(
        "reform_tasks",
        "changai_reform_tasks",
        "aggregate",
        "Reform tasks (任务台账) by year, status and lead unit",
        ("year", "status", "unit"),
    ),
    Family(
        "reform_tasks_overdue",
        "changai_reform_tasks_overdue",
        "aggregate",
        "Reform tasks past their deadline and not completed now (督办), by year and lead unit",
        ("year", "unit"),
    ),
    Family(
        "reform_tasks_completed",
        "changai_reform_tasks_completed_total",
        "counter",
        "Reform tasks verified completed, by year, lead unit and whether on time",
        ("year", "unit", "on_time"),
    ),
    Family(
        "reform_documents",
        "changai_reform_documents_total",
        "counter",
        "Policy documents issued by member units, by year and unit",
        ("year", "unit"),
    ),
    Family(
        "reform_pilots",
        "changai_reform_pilots_total",
        "counter",
        "Reform pilots designated, by year, kind and mode",
        ("year", "kind", "mode"),
    ),
    Family(
        "reform_city_plans",
        "changai_reform_city_plans",
        "aggregate",
        "Cities whose implementation plan is recorded (value 1 each)",
        ("city",),
    ),
    Family(
        "reform_reminders",
        "changai_reform_reminders_total",
        "counter",
        "Supervision notices told: overdue, progress due",
        ("stage",),
    ),
    # -- the pipe -----------------------------------------------------------------
    Family(
        "events",
        "changai_projection_events_total",
        "counter",
        "Events applied by the projection, by topic and event type",
        ("topic", "type"),
    ),
    Family(
        "skipped",
        "changai_projection_events_skipped_total",
        "counter",
        "Records the projection did not apply: unknown type (newer producer), invalid (dead-lettered) "
        "or duplicate (an event id published again)",
        ("topic", "reason"),
    ),
    Family(
        "last_event",
        "changai_projection_last_event_timestamp_seconds",
        "max",
        "Time (CloudEvents time) of the newest event applied, by topic",
        ("topic",),
    ),
    Family(
        "dlq",
        "changai_dlq_records_total",
        "counter",
        "Records in the dead-letter topics (<topic>.dlq), by source topic and the consumer that parked them",
        ("topic", "consumer"),
    ),
    Family(
        "dlq_last",
        "changai_dlq_last_record_timestamp_seconds",
        "max",
        "Time of the newest dead-letter record, by source topic",
        ("topic",),
    ),
)

FAMILIES: dict[str, Family] = {f.fid: f for f in _FAMILIES}
BY_NAME: dict[str, Family] = {f.name: f for f in _FAMILIES if not f.internal}
EXPORTED: tuple[Family, ...] = tuple(f for f in _FAMILIES if not f.internal)
MAX_KIND: frozenset[str] = frozenset(f.fid for f in _FAMILIES if f.kind == "max")

# Notice latency buckets, in milliseconds (exported as seconds).
LATENCY_BUCKETS_MS = (100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000, 300000)
