"""Errors onto HTTP: `APIError`, FastAPI's validation errors and Starlette's own 404/405
become OpenAI's error shape with their status. Unexpected exceptions become a 500 with a
generic message: no stack trace or path leaks.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import JSONResponse

from openchat.protocol.errors import APIError, error_body

logger = logging.getLogger(__name__)


def error_response(error: APIError) -> JSONResponse:
    return JSONResponse(error.body(), status_code=error.status, headers=error.headers or None)



_UNION_MEMBERS = {"str", "int", "float", "bool", "dict", "list"}
_TYPE_ERRORS = {"int_type", "float_type", "bool_type", "string_type", "list_type",
                "dict_type", "model_type", "model_attributes_type"}


def _loc_to_param(loc: tuple[Any, ...]) -> str | None:
    # Union members show up in the location by type ("list[...]", "str"): not params.
    parts = [str(p) for p in loc if p not in ("body", "query", "path")
             and not (isinstance(p, str) and ("[" in p or p in _UNION_MEMBERS))]
    if not parts:
        return None
    param = parts[0]
    for part in parts[1:]:
        param += f"[{part}]" if part.isdigit() else f".{part}"
    return param


def validation_error(exc: RequestValidationError) -> APIError:
    """The first pydantic error, phrased for a client, naming the parameter."""
    errors = exc.errors()
    first = errors[0] if errors else {}
    loc = tuple(first.get("loc", ()))
    param = _loc_to_param(loc)
    kind = first.get("type", "")
    message = first.get("msg", "Invalid request.")
    if kind == "json_invalid":
        return APIError(
            "We could not parse the JSON body of your request. "
            "(HINT: send valid JSON with Content-Type: application/json.)",
            code="invalid_json",
        )
    if kind == "missing" and param is None:  # the body itself
        return APIError("The request body is missing: send a JSON object "
                        "(Content-Type: application/json).", code="missing_required_parameter")
    if kind == "missing":
        return APIError(f"Missing required parameter: '{param}'.", param=param,
                        code="missing_required_parameter")
    if kind == "extra_forbidden":
        return APIError(f"Unrecognized request argument supplied: {param}",
                        param=param, code="unknown_parameter")
    if kind in _TYPE_ERRORS:  # strict types: "5" is not an integer, 1 is not a boolean
        return APIError(f"Invalid type for '{param}': {message.lower()}.", param=param,
                        code="invalid_type")
    if kind.startswith("value_error"):
        message = message.removeprefix("Value error, ")
    if param and param not in message:
        message = f"Invalid value for '{param}': {message}"
    return APIError(message, param=param, code="invalid_value")


def openapi_spec(app: FastAPI) -> dict[str, Any]:
    """FastAPI's spec, made true: validation errors are our 400 (declared per route by
    routing.error_responses), never FastAPI's 422 shape."""
    if app.openapi_schema is None:
        spec = get_openapi(title=app.title, version=app.version, routes=app.routes)
        for operations in spec.get("paths", {}).values():
            for operation in operations.values():
                operation.get("responses", {}).pop("422", None)
        schemas = spec.get("components", {}).get("schemas", {})
        for name in ("HTTPValidationError", "ValidationError"):
            schemas.pop(name, None)
        app.openapi_schema = spec
    return app.openapi_schema


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def _api_error(_: Request, exc: APIError) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(validation_error(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = exc.detail if isinstance(exc.detail, str) else "Request failed."
        if exc.status_code == 404:
            message = "Unknown endpoint."
        elif exc.status_code == 405:
            message = "Method not allowed for this endpoint."
        error = APIError(message, status=exc.status_code)
        return error_response(error)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        logger.exception("unhandled error on %s", request.url.path)
        return JSONResponse(
            error_body("The server had an error processing your request.", "server_error"),
            status_code=500,
        )
