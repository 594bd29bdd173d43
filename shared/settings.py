"""Settings from environment variables (prefix ``CHANGAI_``) with local defaults.

The defaults point at the native runtime of ``deploy/local`` so that a service
started by hand on a developer's machine just works; production sets every
secret explicitly (see README, production checklist).
"""
from __future__ import annotations

import base64
from functools import lru_cache

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

# Local-only defaults. They are public (they are in this file), so they protect
# nothing: the production checklist requires real values.
LOCAL_JWT_SECRET = "changai-local-development-secret-not-for-production"
LOCAL_DATA_KEY = base64.b64encode(b"changai-local-data-key-32-bytes!").decode()


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
    # Idle keep-alive of the APIs: longer than the clients' and load balancers' own (shared.http.serve).
    http_keep_alive_s: int = 75
    data_dir: str = ".run/data"

    # Authentication: HS256 with a shared secret by default, RS256 via JWKS when set.
    jwt_secret: SecretStr = SecretStr(LOCAL_JWT_SECRET)
    jwt_algorithm: str = "HS256"
    jwt_jwks_url: str | None = None
    jwt_issuer: str = "changai-local"
    jwt_audience: str = "changai"

    # Key for personal data at rest (AES-256-GCM) and for keyed lookup hashes.
    data_key: SecretStr = SecretStr(LOCAL_DATA_KEY)

    # Outbox relay.
    outbox_poll_interval_s: float = 1.0
    outbox_batch_size: int = 500
    # Replication of the topics the stream processors (Faust) create themselves: their tables' changelogs.
    # 3 on a three-broker cluster, so losing a broker loses no state; 1 where there is one broker.
    stream_replication_factor: int = 1
    # Longest a stream processor's fetch waits at the broker for records (see shared.streams.bound_fetch_wait).
    stream_fetch_max_wait_ms: int = 20

    # Notices (skeleton): region code -> webhook URL, and its signing secret.
    notifier_webhooks: dict[str, str] = Field(default_factory=dict)
    notifier_webhook_secret: SecretStr = SecretStr("whsec_" + base64.b64encode(b"changai-local-webhook-secret-32b").decode())
    outbound_allow_private: bool = False

    def data_key_bytes(self) -> bytes:
        key = base64.b64decode(self.data_key.get_secret_value())
        if len(key) != 32:
            raise ValueError("CHANGAI_DATA_KEY must be base64 of 32 bytes")
        return key


@lru_cache
def get_settings() -> Settings:
    return Settings()
