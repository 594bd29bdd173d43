"""Every API gets the boundary from create_app, without a line of its own: each service runs as its own
process and every operation of its live OpenAPI is sent what used to answer 500 or the wrong 4xx:

- integers beyond 64 bits in each integer path and query parameter -> 422
- a NUL in each string query parameter and in a JSON body, a lone surrogate in a JSON body -> 422
- a JSON body sent as text/plain -> 415, a body over the limit -> 413
- no token -> 401 with ``WWW-Authenticate: Bearer``
and none of them may answer 5xx. The OpenAPI itself documents the bearer scheme and the problem answers,
and /docs loads nothing from outside the service."""
import re
import uuid

import httpx
import pytest

from shared.auth import mint_token

pytestmark = pytest.mark.integration

SERVICES = ["membership", "funding", "training", "notifier", "reform", "intake"]
HUGE = "99999999999999999999"
LIMIT = 64 * 1024
METHODS = ("get", "post", "put", "patch", "delete")
# Streamed uploads that take no whole-body limit (body_limit(None)); those documenting a CSV or NDJSON
# body are found in the OpenAPI, these read the stream without documenting it.
STREAMED = {("membership", "/v1/members:import")}
HOSTILE_JSON = [
    (b'{"note": "a\\u0000b"}', 422),
    (b'{"n": ' + HUGE.encode() + b"}", 422),
    (b'{"note": "a\\ud800b"}', 422),
    (b'{"pad": "' + b"a" * (LIMIT + 1) + b'"}', 413),
]


@pytest.fixture(scope="module")
async def apis(stack, make_database):
    """``await apis(name)``: the base URL of that service's API, started on first use (one broken service
    fails its own tests only)."""
    started: dict[str, str] = {}

    async def api(name: str) -> str:
        if name not in started:
            env = stack.service_env(name, database_url=await make_database(name),
                                    CHANGAI_HTTP_MAX_BODY_BYTES=str(LIMIT))
            await stack.start_service(name, ["-m", f"services.{name}", "api"], env, timeout=120)
            started[name] = f"http://127.0.0.1:{env['CHANGAI_HTTP_PORT']}"
        return started[name]

    return api


def operations(spec):
    for path, item in spec["paths"].items():
        for method, op in item.items():
            if method in METHODS:
                yield path, method, op


def params(op, where):
    return [p for p in op.get("parameters", []) if p["in"] == where]


def is_int(param) -> bool:
    schema = param.get("schema", {})
    kinds = [schema.get("type")] + [s.get("type") for s in schema.get("anyOf", [])]
    kinds += [s.get("items", {}).get("type") for s in [*schema.get("anyOf", []), schema]]
    return "integer" in kinds


def is_str(param) -> bool:
    schema = param.get("schema", {})
    options = [schema, *schema.get("anyOf", [])]
    return any(o.get("type") == "string" and not o.get("format") and not o.get("enum") and "pattern" not in o
               for o in options)


def fill(path, op, **override):
    """The path with a harmless value for each parameter (1 for integers, a fresh UUID, else "x")."""
    for p in params(op, "path"):
        schema = p.get("schema", {})
        value = override.get(p["name"]) or ("1" if is_int(p) else str(uuid.uuid4())
                                            if schema.get("format") == "uuid" else "x")
        path = path.replace("{" + p["name"] + "}", value)
    return path


def token_for(spec) -> dict[str, str]:
    scopes = sorted({op.get("x-changai-scope") for _, _, op in operations(spec)} - {None})
    return {"Authorization": "Bearer " + mint_token("boundary-test", scopes or ["none"], "640000")}


def no_5xx(resp, what):
    assert resp.status_code < 500, f"{what}: {resp.status_code} {resp.text[:300]}"


def problem(resp, status, what):
    assert resp.status_code == status, f"{what}: {resp.status_code} {resp.text[:300]}"
    assert resp.headers["content-type"] == "application/problem+json", what


@pytest.mark.parametrize("service", SERVICES)
async def test_hostile_inputs_never_reach_a_route(apis, service):
    async with httpx.AsyncClient(base_url=await apis(service), timeout=30) as http:
        spec = (await http.get("/openapi.json")).json()
        auth = token_for(spec)
        tried = 0
        for path, method, op in operations(spec):
            for p in params(op, "path"):
                if is_int(p):
                    url = fill(path, op, **{p["name"]: HUGE})
                    problem(await http.request(method, url, headers=auth, json={}), 422, f"{method} {url}")
                    tried += 1
            for p in params(op, "query"):
                if is_int(p):
                    what = f"{method} {path}?{p['name']}={HUGE}"
                    problem(await http.request(method, fill(path, op), params={p["name"]: HUGE}, headers=auth,
                                               json={}), 422, what)
                    tried += 1
                elif is_str(p):
                    what = f"{method} {path}?{p['name']}=%00"
                    problem(await http.request(method, fill(path, op), params={p["name"]: "a\x00b"}, headers=auth,
                                               json={}), 422, what)
                    tried += 1
            body = op.get("requestBody", {}).get("content", {})
            if body.keys() == {"application/json"}:  # a JSON body FastAPI reads: the boundary checks it
                url = fill(path, op)
                problem(await http.request(method, url, content=b'{"name": "a"}',
                                           headers={**auth, "content-type": "text/plain"}), 415, f"{method} {url} text")
                for probe, status in HOSTILE_JSON:
                    problem(await http.request(method, url, content=probe,
                                               headers={**auth, "content-type": "application/json"}), status,
                            f"{method} {url} {probe[:40]!r}")
                tried += 1 + len(HOSTILE_JSON)
            elif any(media.endswith("+json") for media in body):  # the route reads its own media types
                url = fill(path, op)
                media = next(m for m in body if m.endswith("+json"))
                for probe, _ in HOSTILE_JSON:
                    resp = await http.request(method, url, content=probe, headers={**auth, "content-type": media})
                    no_5xx(resp, f"{method} {url} {probe[:40]!r}")
                tried += len(HOSTILE_JSON)
            elif "text/csv" in body or (service, path) in STREAMED:
                url = fill(path, op)
                csv = b"member_id,result\n" + b"x,y\n" * (LIMIT // 4 + 1000)
                resp = await http.request(method, url, content=csv, headers={**auth, "content-type": "text/csv"})
                no_5xx(resp, f"{method} {url} streamed")
                assert resp.status_code != 413, f"{method} {url}: a streamed upload was cut at the default limit"
                tried += 1
        assert tried > 10, f"{service}: only {tried} probes (did the OpenAPI lose its parameters?)"
        print(f"{service}: {tried} hostile requests over {sum(1 for _ in operations(spec))} operations")


@pytest.mark.parametrize("service", SERVICES)
async def test_no_token_is_401_with_the_bearer_challenge_and_the_openapi_says_so(apis, service):
    async with httpx.AsyncClient(base_url=await apis(service), timeout=30) as http:
        spec = (await http.get("/openapi.json")).json()
        assert spec["components"]["securitySchemes"]["bearerAuth"]["scheme"] == "bearer"
        secured = 0
        for path, method, op in operations(spec):
            for code in ("400", "404", "409", "422", "503"):
                assert "application/problem+json" in op["responses"][code]["content"], (path, method, code)
            if "security" not in op:
                continue
            secured += 1
            assert {"401", "403"} <= set(op["responses"]), (path, method)
            url = fill(path, op)
            resp = await http.request(method, url)  # no body either: the token is looked at first
            no_5xx(resp, f"{method} {url}")
            if resp.status_code == 401:
                assert resp.headers["www-authenticate"].startswith("Bearer"), (method, url)
            else:  # a body or parameter the route checks before its token dependency
                assert resp.status_code in (400, 404, 415, 422), f"{method} {url}: {resp.status_code}"
        assert secured, f"{service}: no secured operation in the OpenAPI"
        page = await http.get("/docs")
        assert page.status_code == 200
        for url in re.findall(r'(?:src|href)="([^"]+)"', page.text) + re.findall(r"url: '([^']+)'", page.text):
            assert url.startswith("/"), url
            assert (await http.get(url)).status_code == 200, url
