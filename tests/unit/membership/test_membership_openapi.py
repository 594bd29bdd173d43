"""Every membership route declares what it answers: the OpenAPI has a schema for each success."""
from services.membership.main import build_app


def test_every_route_has_a_response_schema():
    spec = build_app().openapi()
    missing = []
    for path, methods in spec["paths"].items():
        for method, op in methods.items():
            ok = [code for code in op["responses"] if code.startswith("2")]
            content = {ctype: c.get("schema") for code in ok
                       for ctype, c in op["responses"][code].get("content", {}).items()}
            if not ok or not any(schema and schema != {} for schema in content.values()):
                missing.append(f"{method.upper()} {path}")
    assert missing == []
    assert len([p for p in spec["paths"] if p.startswith("/v1/")]) >= 20


def test_lists_answer_items_and_next_cursor():
    spec = build_app().openapi()
    schemas = spec["components"]["schemas"]
    for path in ("/v1/branches", "/v1/members", "/v1/stations", "/v1/imports", "/v1/lookups", "/v1/regions",
                 "/v1/members/{member_id}/transfers", "/v1/members/{member_id}/reveals"):
        ref = spec["paths"][path]["get"]["responses"]["200"]["content"]["application/json"]["schema"]["$ref"]
        assert set(schemas[ref.rsplit("/", 1)[1]]["properties"]) == {"items", "next_cursor"}, path
        params = {p["name"] for p in spec["paths"][path]["get"].get("parameters", [])}
        assert {"limit", "cursor"} <= params, path
