"""The notifier's settings (env prefix ``CHANGAI_``), on top of the platform's."""

from __future__ import annotations

from pydantic import Field, SecretStr, field_validator

from shared.settings import Settings

# Event types that break through quiet hours: someone has to act on them now.
CRITICAL_TYPES = [
    "changai.notifier.channel.paused.v1",
    "changai.notifier.delivery.failed.v1",
    "changai.funding.subsidy.rejected.v1",
    "changai.funding.grant.revoked.v1",
    "changai.membership.branch.dissolved.v1",
    "changai.notifier.test.v1",
]


def _schedule(text: str) -> tuple[float, ...]:
    values = tuple(float(x) for x in str(text).replace(" ", "").split(",") if x)
    if any(v < 0 for v in values):
        raise ValueError("retry delays must not be negative")
    return values


class NotifierSettings(Settings):
    service: str = "notifier"

    # Faust app id (= consumer group of the worker) and where a new group starts reading.
    notifier_app_id: str = "notifier"
    notifier_auto_offset_reset: str = "earliest"
    # A worker that dies is noticed after this long (its partitions move to the others).
    notifier_session_timeout_s: float = 10.0
    # Records between the stages are batched for this long (fewer, larger produce requests).
    notifier_producer_linger_ms: int = 3

    # Retry schedules (seconds between attempts) per channel kind: the k-th retry waits
    # the k-th delay on retry topic ``notifier.retry.<k>``. Robots need minutes, not hours.
    notifier_retry_webhook: str = "10,60,600,3600,21600"
    notifier_retry_wecom: str = "10,60,300,600"
    notifier_retry_dingtalk: str = "10,60,300,600"
    notifier_retry_email: str = "10,60,600,3600"
    notifier_retry_jitter: float = 0.1  # ± fraction of each delay

    # Per-channel send budget: WeCom and DingTalk robots take about 20 messages a minute.
    notifier_robot_rate: int = 20
    notifier_robot_window_s: float = 60.0
    notifier_webhook_rate: int = 0  # 0 = no budget
    notifier_email_rate: int = 60
    notifier_email_window_s: float = 60.0
    notifier_merge_bursts: bool = True  # robots: a burst beyond the budget goes out as summaries

    # Back-offs for robots' "too frequent" answers (DingTalk blocks for 10 minutes).
    notifier_wecom_throttle_s: float = 60.0
    notifier_dingtalk_blocked_s: float = 600.0

    notifier_attempt_timeout_s: float = 15.0
    notifier_lease_margin_s: float = 10.0  # a claimed attempt is ours for its timeout plus this
    notifier_pause_after_s: float = 86400.0  # a channel failing this long is paused
    # A channel holds this many deliveries in the worker's memory; beyond, they wait their turn in
    # PostgreSQL (read back in order), so the deliver topic never waits for a slow or busy channel.
    notifier_max_queued_per_channel: int = 500
    # A robot over its budget this long (its notices already merged into digests): the notices
    # waiting longer become dead letters (DLQ, delivery.failed, an operator alert), not a loop forever.
    notifier_robot_max_wait_s: float = 1800.0

    # Robot endpoints (pre-approved hosts; tests point them at a local fake).
    notifier_wecom_url: str = "https://qyapi.weixin.qq.com/cgi-bin/webhook/send"
    notifier_dingtalk_url: str = "https://oapi.dingtalk.com/robot/send"

    # The union's mail relay.
    notifier_smtp_host: str = "127.0.0.1"
    notifier_smtp_port: int = 25
    notifier_smtp_username: str | None = None
    notifier_smtp_password: SecretStr | None = None
    # STARTTLS: unset = aiosmtplib's upgrade whenever the relay offers it, and required when a
    # username is set (credentials never go in clear); true = required; false = never (a relay on
    # localhost). NOTIFIER_SMTP_TLS = implicit TLS from the first byte (port 465).
    notifier_smtp_starttls: bool | None = None
    notifier_smtp_tls: bool = False
    notifier_smtp_from: str = "changai-notices@localhost"
    # Where a mail client's one-click unsubscribe (List-Unsubscribe-Post) reaches the notifier's API,
    # e.g. https://notices.example.gov.cn; unset: only the mailto: form is offered.
    notifier_public_url: str | None = None

    # Extra CA certificates (PEM) trusted for webhooks and the mail relay, on top of the system's.
    notifier_ca_bundle: str | None = None
    # Holiday and 调休 schedules as data (one YAML or JSON file per year, e.g. 2027.yaml) for the
    # years the chinese-calendar package does not know yet.
    notifier_holidays_dir: str | None = None

    # Bulk operations (a member import, a roster, a batch of payments) are told as digests: one
    # notice per channel when the batch has been quiet this long, or has run this long since the last.
    notifier_digest_quiet_s: float = 5.0
    notifier_digest_max_s: float = 30.0
    # Where an import's report is read ({id}: the import's id), linked from its digest.
    notifier_import_report_url: str = "http://127.0.0.1:8001/v1/imports/{id}"

    notifier_critical_types: list[str] = Field(default_factory=lambda: list(CRITICAL_TYPES))
    notifier_default_locale: str = "zh-CN"
    notifier_test_send_wait_s: float = 10.0

    # How often a worker looks in PostgreSQL for due work of the channels it owns that it did not
    # schedule itself (after a restart or a rebalance: retries, deferrals, backlogs, lapsed leases).
    # A running worker schedules its own retries to the moment; this is the safety net.
    notifier_sweep_interval_s: float = 1.0
    notifier_sweep_grace_s: float = 60.0  # unused since the due-time scheduler (kept for old environments)

    @field_validator(
        "notifier_retry_webhook", "notifier_retry_wecom", "notifier_retry_dingtalk", "notifier_retry_email"
    )
    @classmethod
    def _valid_schedule(cls, value: str) -> str:
        from services.notifier.topics import RETRY_TIERS

        if len(_schedule(value)) > RETRY_TIERS:
            raise ValueError(f"at most {RETRY_TIERS} retries (one retry topic each)")
        return value

    def schedule(self, kind: str) -> tuple[float, ...]:
        return _schedule(getattr(self, f"notifier_retry_{kind}"))

    def budget(self, kind: str) -> tuple[int, float]:
        """(messages, window seconds) a channel of ``kind`` may send; 0 messages = unlimited."""
        if kind in ("wecom", "dingtalk"):
            return self.notifier_robot_rate, self.notifier_robot_window_s
        if kind == "email":
            return self.notifier_email_rate, self.notifier_email_window_s
        return self.notifier_webhook_rate, 60.0

    @property
    def lease_s(self) -> float:
        """How long a claimed attempt is ours: an attempt's timeout plus a margin."""
        return self.notifier_attempt_timeout_s + self.notifier_lease_margin_s
