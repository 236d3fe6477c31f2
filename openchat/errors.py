"""Errors in OpenAI's shape: {"error": {"message", "type", "param", "code"}}.

Everything a client can send that we refuse is raised as an `APIError` with its status;
handlers registered on the app turn it (and FastAPI's own validation errors) into JSON.
Unexpected exceptions become a 500 with a generic message: no stack trace or path leaks.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import JSONResponse

logger = logging.getLogger(__name__)

_TYPE_BY_STATUS = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
    503: "service_unavailable",
}


class APIError(Exception):
    def __init__(
        self,
        message: str,
        *,
        status: int = 400,
        param: str | None = None,
        code: str | None = None,
        type: str | None = None,
        headers: dict[str, str] | None = None,
    ):
        super().__init__(message)
        self.message = message
        self.status = status
        self.param = param
        self.code = code
        self.headers = headers or {}  # e.g. Retry-After and x-ratelimit-* on a 429
        self.type = type or _TYPE_BY_STATUS.get(status, "server_error")

    def body(self) -> dict[str, Any]:
        return error_body(self.message, self.type, self.param, self.code)


def error_body(
    message: str, type: str, param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def error_response(error: APIError) -> JSONResponse:
    return JSONResponse(error.body(), status_code=error.status, headers=error.headers or None)


def invalid_param(param: str, message: str, code: str = "invalid_value") -> APIError:
    return APIError(message, param=param, code=code)


def model_not_found(model: str) -> APIError:
    return APIError(
        f"The model `{model}` does not exist.",
        status=404,
        param="model",
        code="model_not_found",
    )


def engine_unavailable() -> APIError:
    return APIError(
        "The inference engine is unavailable; retry shortly.",
        status=503,
        code="engine_unavailable",
    )


def _loc_to_param(loc: tuple[Any, ...]) -> str | None:
    parts = [str(p) for p in loc if p not in ("body", "query", "path")]
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
    if kind == "missing":
        return APIError(f"Missing required parameter: '{param}'.", param=param,
                        code="missing_required_parameter")
    if kind == "extra_forbidden":
        return APIError(f"Unrecognized request argument supplied: {param}",
                        param=param, code="unknown_parameter")
    if kind.startswith("value_error"):
        message = message.removeprefix("Value error, ")
    if param and param not in message:
        message = f"Invalid value for '{param}': {message}"
    return APIError(message, param=param, code="invalid_value")


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
