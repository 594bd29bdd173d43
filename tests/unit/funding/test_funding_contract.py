"""Funding's HTTP contract (issue 14): every route declares its answer, every list pages by cursor."""
from fastapi.routing import APIRoute

from services.funding.api import router


def test_every_route_declares_a_response_model():
    routes = [r for r in router.routes if isinstance(r, APIRoute)]
    assert len(routes) >= 21
    assert [f"{sorted(r.methods)} {r.path}" for r in routes if r.response_model is None] == []


def test_every_list_answers_items_and_next_cursor_with_limit_and_cursor():
    lists = [r for r in router.routes if isinstance(r, APIRoute) and "GET" in r.methods
             and "items" in r.response_model.model_fields]
    assert {r.path for r in lists} >= {"/v1/funds", "/v1/grants", "/v1/grants/{grant_id}/disbursements",
                                       "/v1/subsidy-rules", "/v1/subsidy-routes", "/v1/subsidy-claims",
                                       "/v1/reports/funds", "/v1/reports/sources", "/v1/reports/beneficiaries",
                                       "/v1/accounts/{account_id}/journal"}
    for route in lists:
        assert "next_cursor" in route.response_model.model_fields, route.path
        params = {p.name for p in route.dependant.query_params}
        assert {"limit", "cursor"} <= params and not params & {"offset", "after"}, (route.path, params)
