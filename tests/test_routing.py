"""Unit tests: every route of the service is declared once, with its scopes and label."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from bentoml._internal.server.base_app import BaseAppFactory
from fastapi import FastAPI
from starlette.routing import Route

import service
from openchat.access.scopes import (
    ADMIN_SCOPE,
    DOCUMENTS_SCOPE,
    DOCUMENTS_WRITE_SCOPE,
    INFERENCE_SCOPE,
)
from openchat.api.routing import (
    OPEN,
    UNKNOWN,
    Router,
    RouteTable,
    declare_bentoml_routes,
)

# What BentoML's ServiceAppFactory adds beside the system routes and the typed APIs.
BENTOML_PAGES = ["/", "/docs.json", "/schema.json", "/static_content/index.css"]


def _declared(method: str, path: str):
    spec = service.ROUTES.find(method, path)
    assert spec is not UNKNOWN, f"{method} {path} has no declared scope"
    return spec


def test_every_openai_app_route_declares_its_scopes():
    routes = [r for r in service.openai_app.routes if hasattr(r, "methods")]
    assert len(routes) >= 16
    for route in routes:
        specs = [s for s in service.ROUTES if s.path == route.path]
        assert specs, f"{route.path} was added to the app without a declaration"
        assert set(route.methods) - {"HEAD"} <= set().union(*(s.methods for s in specs))


def test_every_bentoml_route_declares_its_scopes():
    for name, api in service.OpenChat.apis.items():
        assert _declared("POST", api.route).scopes == service.TYPED_API_SCOPES[name]
    fake_factory = SimpleNamespace(livez=None, readyz=None, metrics=None)
    system = BaseAppFactory.get_system_routes(fake_factory)
    assert {r.path for r in system if isinstance(r, Route)} >= {"/livez", "/readyz"}
    for route in system:
        _declared("GET", route.path)
    for path in BENTOML_PAGES:
        _declared("GET", path)


def test_scopes_as_declared():
    find = service.ROUTES.find
    assert find("GET", "/readyz").scopes is OPEN
    assert find("POST", "/v1/chat/completions").scopes == {INFERENCE_SCOPE}
    assert find("POST", "/ask").scopes == {INFERENCE_SCOPE, DOCUMENTS_SCOPE}
    assert find("POST", "/v1/collections/notes/search").scopes == {DOCUMENTS_SCOPE}
    write = find("DELETE", "/v1/collections/notes/documents/abc")
    assert write.scopes == {DOCUMENTS_WRITE_SCOPE}
    assert write.label == "/v1/collections/{collection}/documents/{id}"
    assert find("POST", "/v1/admin/keys").scopes == {ADMIN_SCOPE}
    assert find("GET", "/v1/models/openchat-3.5").label == "/v1/models/{model}"
    # Unknown /v1 paths and wrong methods reach the catch-all; other paths are UNKNOWN.
    assert find("POST", "/v1/nothing").label == "other"
    assert find("POST", "/nothing") is UNKNOWN and UNKNOWN.scopes == {INFERENCE_SCOPE}


def test_protected_metrics_and_docs_follow_the_settings():
    table = RouteTable()
    declare_bentoml_routes(table, protect_metrics=False, protect_docs=True)
    assert table.find("GET", "/metrics").scopes is OPEN
    assert table.find("GET", "/docs.json").scopes == {INFERENCE_SCOPE}
    assert table.find("GET", "/static_content/swagger-ui.css").scopes == {INFERENCE_SCOPE}


def test_a_route_cannot_be_added_without_scopes():
    router = Router(FastAPI(), RouteTable())
    with pytest.raises(TypeError):
        router.get("/v1/secret")  # scopes= is required


def test_the_openapi_spec_says_what_the_service_answers():
    """Errors are 400 in OpenAI's shape, not FastAPI's 422; every route lists the errors it
    can answer; operation ids are unique; the catch-all is not an endpoint."""
    spec = service.openai_app.openapi()
    operations = [(path, method, op) for path, ops in spec["paths"].items()
                  for method, op in ops.items()]
    assert len(operations) >= 16
    assert "/v1/{path}" not in spec["paths"]
    assert len({op["operationId"] for _, _, op in operations}) == len(operations)
    error = {"$ref": "#/components/schemas/ErrorBody"}
    for path, method, op in operations:
        responses = op["responses"]
        assert "422" not in responses, (method, path)
        assert {"400", "500", "503"} <= set(responses), (method, path)
        if method in ("post", "put", "patch"):
            assert "413" in responses
        for status, response in responses.items():
            if status != "200":
                assert response["content"]["application/json"]["schema"] == error
    assert {"401", "403", "429"} <= set(spec["paths"]["/v1/chat/completions"]["post"]
                                        ["responses"])
    assert "HTTPValidationError" not in spec["components"]["schemas"]
    detail = spec["components"]["schemas"]["ErrorDetail"]
    assert set(detail["required"]) == {"message", "type", "param", "code"}
