"""Errors in OpenAI's shape: {"error": {"message", "type", "param", "code"}}.

Everything a client can send that we refuse is raised as an `APIError` with its status,
by any layer; api/errors.py turns it (and FastAPI's own validation errors) into JSON.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

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
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.param = param
        self.code = code
        self.headers = headers or {}  # e.g. Retry-After and x-ratelimit-* on a 429
        self.type = type or _TYPE_BY_STATUS.get(status, "server_error")

    def body(self) -> dict[str, Any]:
        return error_body(self.message, self.type, self.param, self.code)


class ErrorDetail(BaseModel):
    message: str = Field(description="What went wrong, for a person to read.")
    type: str = Field(description="invalid_request_error, authentication_error, "
                      "permission_error, not_found_error, rate_limit_error, "
                      "service_unavailable or server_error.")
    param: str | None = Field(description="The request parameter at fault, if one is.")
    code: str | None = Field(description="A stable machine-readable code, e.g. "
                             "context_length_exceeded, invalid_type, rate_limit_exceeded.")


class ErrorBody(BaseModel):
    """Every error the service answers, on every route (the OpenAPI spec says so)."""

    error: ErrorDetail


def error_body(
    message: str, type: str, param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


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
