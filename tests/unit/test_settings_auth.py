import time

import jwt
import pytest

from shared import regions
from shared.auth import decode_token, mint_token
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
    with pytest.raises(Problem) as err:
        p.ensure_region("640202")
    assert err.value.status == 403


async def test_forged_expired_and_unknown_org_tokens_refused():
    settings = Settings()
    forged = mint_token("x", ["membership:write"], settings=Settings(jwt_secret="another-secret-of-at-least-32-bytes!!"))
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
