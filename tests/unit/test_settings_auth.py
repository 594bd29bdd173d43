import time

import jwt
import pytest

from shared import regions
from shared.auth import decode_token, mint_token
from shared.errors import OutOfScope, status_of
from shared.problems import Problem
from shared.settings import Settings


def test_settings_from_environment(monkeypatch):
    monkeypatch.setenv("CHANGAI_KAFKA_BOOTSTRAP", "127.0.0.1:1234")
    monkeypatch.setenv("CHANGAI_NOTIFIER_WEBHOOKS", '{"640100": "https://example.org/h"}')
    monkeypatch.setenv("CHANGAI_HTTP_PORT", "9999")
    s = Settings()
    assert s.kafka_bootstrap == "127.0.0.1:1234"
    assert s.notifier_webhooks == {"640100": "https://example.org/h"}
    assert s.http_port == 9999
    assert len(s.data_key_bytes()) == 32
    assert "secret" not in repr(s.jwt_secret)


def test_regions_tree():
    assert len(regions.CITIES) == 5 and len(regions.COUNTIES) == 22
    assert regions.ancestors("640104") == ["640104", "640100", "640000"]
    assert regions.contains("640100", "640104")
    assert not regions.contains("640200", "640104")
    assert regions.city_of("640522") == "640500"
    assert set(regions.descendants("640200")) == {"640200", "640202", "640205", "640221"}


async def test_token_roundtrip_and_scope():
    settings = Settings()
    token = mint_token("hr-system", ["membership:write"], "640100", settings=settings)
    p = await decode_token(token, settings)
    assert p.subject == "hr-system" and "membership:write" in p.scopes
    assert p.may_act_on("640104") and not p.may_act_on("640202")
    with pytest.raises(OutOfScope) as err:
        p.ensure_region("640202")
    assert status_of(err.value) == 403


async def test_forged_expired_and_unknown_org_tokens_refused():
    settings = Settings()
    other_key = Settings(jwt_secret="another-secret-of-at-least-32-bytes!!")
    forged = mint_token("x", ["membership:write"], settings=other_key)
    expired = mint_token("x", ["membership:write"], ttl_s=-10, settings=settings)
    now = int(time.time())
    unknown_org = jwt.encode({"sub": "x", "scope": "a", "org": "110000", "iss": settings.jwt_issuer,
                              "aud": settings.jwt_audience, "exp": now + 60},
                             settings.jwt_secret.get_secret_value(), algorithm="HS256")
    none_alg = jwt.encode({"sub": "x", "scope": "a", "org": "640000", "exp": now + 60}, None, algorithm="none")
    for token, why in [(forged, "not valid"), (expired, "expired"), (unknown_org, "not a known region"),
                       (none_alg, "not valid")]:
        with pytest.raises(Problem, match=why) as err:
            await decode_token(token, settings)
        assert err.value.status == 401


# -- production refuses the published defaults --------------------------------------------------
OWN = {"CHANGAI_JWT_SECRET": "a-secret-of-our-own-that-is-long-enough",
       "CHANGAI_DATA_KEY": "bXktb3duLTMyLWJ5dGUtZGF0YS1rZXktLS0tLS0tLS0=",
       "CHANGAI_NOTIFIER_WEBHOOK_SECRET": "whsec_b3VyLW93bi13ZWJob29rLXNpZ25pbmcta2V5"}


@pytest.mark.parametrize("environment", ["production", "Production", "prod"])
def test_production_refuses_every_published_default_by_name(monkeypatch, environment):
    from shared.settings import PublishedSecret

    monkeypatch.setenv("CHANGAI_ENVIRONMENT", environment)
    monkeypatch.setenv("CHANGAI_SERVICE", "notifier-api")
    with pytest.raises(PublishedSecret) as err:
        Settings()
    message = str(err.value)
    for name in OWN:
        assert name in message
    for name, value in OWN.items():  # given one by one, the message narrows to what is still missing
        monkeypatch.setenv(name, value)
        if name != list(OWN)[-1]:
            with pytest.raises(PublishedSecret) as err:
                Settings()
            assert name not in str(err.value)
    assert Settings().environment == environment


def test_a_service_is_asked_only_for_the_secrets_it_uses(monkeypatch):
    """The deployments of membership, training, funding and reform get the JWT secret and the data key,
    not the notices' webhook secret: they must start without it, the notifier must not."""
    from shared.settings import PublishedSecret

    monkeypatch.setenv("CHANGAI_ENVIRONMENT", "production")
    monkeypatch.setenv("CHANGAI_JWT_SECRET", OWN["CHANGAI_JWT_SECRET"])
    monkeypatch.setenv("CHANGAI_DATA_KEY", OWN["CHANGAI_DATA_KEY"])
    for service in ("membership", "training", "funding", "reform"):
        assert Settings(service=service).service == service
    for service in ("notifier", "notifier-api", "notifier-worker"):
        with pytest.raises(PublishedSecret, match="CHANGAI_NOTIFIER_WEBHOOK_SECRET"):
            Settings(service=service)
    with pytest.raises(PublishedSecret, match="CHANGAI_NOTIFIER_WEBHOOK_SECRET"):  # webhooks seeded: it signs them
        Settings(service="membership", notifier_webhooks={"640000": "https://hooks.example/changai"})


def test_the_message_never_shows_a_secret(monkeypatch):
    from shared.settings import PublishedSecret

    monkeypatch.setenv("CHANGAI_ENVIRONMENT", "production")
    monkeypatch.setenv("CHANGAI_DATA_KEY", OWN["CHANGAI_DATA_KEY"])
    with pytest.raises(PublishedSecret) as err:
        Settings(service="notifier")
    assert OWN["CHANGAI_DATA_KEY"][-12:] not in str(err.value)
    assert "changai-local" not in str(err.value)


def test_jwks_makes_the_jwt_secret_unneeded(monkeypatch):
    monkeypatch.setenv("CHANGAI_ENVIRONMENT", "production")
    monkeypatch.setenv("CHANGAI_JWT_JWKS_URL", "https://sso.example/jwks.json")
    monkeypatch.setenv("CHANGAI_DATA_KEY", OWN["CHANGAI_DATA_KEY"])
    monkeypatch.setenv("CHANGAI_NOTIFIER_WEBHOOK_SECRET", OWN["CHANGAI_NOTIFIER_WEBHOOK_SECRET"])
    assert Settings().jwt_jwks_url


def test_a_services_own_settings_are_checked_too(monkeypatch):
    from services.notifier.settings import NotifierSettings
    from shared.settings import PublishedSecret

    monkeypatch.setenv("CHANGAI_ENVIRONMENT", "production")
    with pytest.raises(PublishedSecret):
        NotifierSettings()
    for name, value in OWN.items():
        monkeypatch.setenv(name, value)
    assert NotifierSettings().environment == "production"


def test_local_environments_keep_the_defaults(monkeypatch):
    for environment in ("local", "dev", "compose", "kubernetes"):
        monkeypatch.setenv("CHANGAI_ENVIRONMENT", environment)
        assert Settings().environment == environment


def test_a_production_service_does_not_start_on_defaults():
    import subprocess
    import sys

    env = {"PATH": "/usr/bin:/bin", "CHANGAI_ENVIRONMENT": "production", "CHANGAI_HTTP_PORT": "1"}
    root = __import__("pathlib").Path(__file__).resolve().parents[2]
    run = subprocess.run([sys.executable, "-m", "services.funding", "api"], env=env, capture_output=True,
                         text=True, timeout=120, cwd=root)
    assert run.returncode != 0
    assert "CHANGAI_JWT_SECRET" in run.stderr and "CHANGAI_DATA_KEY" in run.stderr, run.stderr[-2000:]
