"""Settings from environment variables (prefix ``CHANGAI_``) with local defaults.

The defaults point at the native runtime of ``deploy/local`` so that a service
started by hand on a developer's machine just works; production sets every
secret explicitly (see README, production checklist).
"""

from __future__ import annotations

import base64
from functools import lru_cache

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

# Local-only defaults. They are public (they are in this file), so they protect
# nothing: the production checklist requires real values.
LOCAL_JWT_SECRET = "changai-local-development-secret-not-for-production"
LOCAL_DATA_KEY = base64.b64encode(b"changai-local-data-key-32-bytes!").decode()

# Environments that must be given every secret: a published default there refuses to start.
PRODUCTION_ENVIRONMENTS = frozenset({"production", "prod"})


class PublishedSecret(RuntimeError):
    """A production start with a secret left at its published default. Not a ValueError on purpose:
    pydantic would wrap that and print the input, which holds the other secrets."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CHANGAI_", extra="ignore")

    service: str = "changai"
    environment: str = "local"
    log_level: str = "INFO"

    kafka_bootstrap: str = "127.0.0.1:19092"
    database_url: str = "postgresql://postgres@127.0.0.1:15432/postgres"
    db_pool_min: int = 2
    db_pool_max: int = 10

    http_host: str = "127.0.0.1"
    http_port: int = 8000
    # Port of a separate /metrics server of the APIs (shared.http.serve), so that an ingress routing `/` to
    # the API port cannot expose it; 0: /metrics on the HTTP port (local, Compose). Faust workers keep
    # /metrics on their own web port, which no ingress routes.
    metrics_port: int = Field(default=0, ge=0, le=65535)
    # Idle keep-alive of the APIs: longer than the clients' and load balancers' own (shared.http.serve).
    http_keep_alive_s: int = 75
    # Largest request body a route takes unless it declares its own (shared.http.body_limit): 413 beyond.
    http_max_body_bytes: int = Field(default=1024 * 1024, ge=0)
    # /docs (Swagger UI) and /redoc, served from the installed package (no CDN); false turns them off.
    http_docs: bool = True
    # Retry-After of the 503 answered while the database cannot be reached.
    http_unavailable_retry_after_s: int = 5
    # Longest a new database connection may take (asyncpg's default is 60 s: requests would hang that long).
    db_connect_timeout_s: float = 10.0
    # A repeated warning of aiokafka or the outbox relay is logged once per this many seconds (shared.logging).
    log_repeat_window_s: float = 10.0
    data_dir: str = ".run/data"

    # Authentication: HS256 with a shared secret by default, RS256 via JWKS when set.
    jwt_secret: SecretStr = SecretStr(LOCAL_JWT_SECRET)
    jwt_algorithm: str = "HS256"
    jwt_jwks_url: str | None = None
    jwt_issuer: str = "changai-local"
    jwt_audience: str = "changai"

    # Key for personal data at rest (AES-256-GCM) and for keyed lookup hashes.
    data_key: SecretStr = SecretStr(LOCAL_DATA_KEY)

    # Migrations: applied by each service at start (local, Compose), or by a Job before the rollout
    # (Kubernetes: false, the service then only checks that every migration is applied, shared.migrate.prepare).
    migrate_on_start: bool = True
    # A migration run waits at most this long for a lock (another run, a busy table), then fails: 0 = no limit.
    migrate_lock_timeout_s: float = Field(default=30.0, ge=0)

    # Outbox relay.
    outbox_poll_interval_s: float = 1.0
    outbox_batch_size: int = 500
    # Replication of the topics the stream processors (Faust) create themselves: their tables' changelogs.
    # 3 on a three-broker cluster, so losing a broker loses no state; 1 where there is one broker.
    stream_replication_factor: int = 1
    # Longest a stream processor's fetch waits at the broker for records (see shared.streams.bound_fetch_wait).
    stream_fetch_max_wait_ms: int = 20
    # Who creates the Kafka topics (shared.topics.apps_create_topics). Locally and in Compose the services create
    # the topics they miss, with this replication; in Kubernetes (environment kubernetes or production) Strimzi's
    # KafkaTopics own them and a service only waits for them, at most topic_wait_s, whatever kafka_create_topics says.
    kafka_create_topics: bool = True
    topic_replication_factor: int = Field(default=1, ge=1)
    topic_wait_s: float = Field(default=300.0, gt=0)

    # Notices (skeleton): region code -> webhook URL, and its signing secret.
    notifier_webhooks: dict[str, str] = Field(default_factory=dict)
    notifier_webhook_secret: SecretStr = SecretStr(
        "whsec_" + base64.b64encode(b"changai-local-webhook-secret-32b").decode()
    )
    outbound_allow_private: bool = False

    @model_validator(mode="after")
    def _no_published_secrets_in_production(self) -> Settings:
        """Production refuses to start on a secret that still has its default from this file (public,
        so it protects nothing). A secret a service does not use is not asked for: the JWT secret when tokens
        are checked through JWKS, the notices' webhook secret outside the notifier unless webhooks are seeded."""
        if self.environment.strip().lower() not in PRODUCTION_ENVIRONMENTS:
            return self
        unused = {
            "jwt_secret": bool(self.jwt_jwks_url),
            "notifier_webhook_secret": not (self.notifier_webhooks or self.service.startswith("notifier")),
        }
        published = []
        for name, field in type(self).model_fields.items():
            default = field.get_default(call_default_factory=True)
            if not isinstance(default, SecretStr) or not default.get_secret_value() or unused.get(name):
                continue
            if getattr(self, name) == default:
                published.append(f"CHANGAI_{name.upper()}")
        if published:
            raise PublishedSecret(
                f"CHANGAI_ENVIRONMENT={self.environment} refuses the published local defaults of "
                f"{', '.join(published)}: set each to a secret of your own (see docs/security.md)"
            )
        return self

    def data_key_bytes(self) -> bytes:
        key = base64.b64decode(self.data_key.get_secret_value())
        if len(key) != 32:
            raise ValueError("CHANGAI_DATA_KEY must be base64 of 32 bytes")
        return key


@lru_cache
def get_settings() -> Settings:
    return Settings()
