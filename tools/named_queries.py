"""Named queries from the configuration: checked once, then each becomes a tool whose
arguments model comes from the declared parameters (types, enums, bounds, defaults)."""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, create_model
from sqlalchemy import text

from openchat.config import NamedQuery, QueryParameter

_TOOL_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")  # what OpenAI clients accept
_TYPES = {"string": str, "integer": int, "number": float, "boolean": bool}
_STRICT = ConfigDict(extra="forbid")


def placeholders(sql: str) -> set[str]:
    """The :name placeholders of a statement, as SQLAlchemy's text() binds them."""
    return set(text(sql).compile().params)


def check_named_query(name: str, query: NamedQuery, reserved: Iterable[str] = ()) -> None:
    """Raise ValueError, naming the setting, for a query that could never run as declared."""
    where = f"sql.named_queries.{name}"
    if not _TOOL_NAME.match(name) or name in reserved:
        raise ValueError(f"{where}: a tool name must match [A-Za-z0-9_-]{{1,64}} and not be "
                         f"one of {', '.join(reserved)}")
    if not query.sql.strip():
        raise ValueError(f"{where}: sql is empty")
    used = placeholders(query.sql)
    if missing := sorted(used - query.parameters.keys()):
        raise ValueError(f"{where}: the SQL uses {', '.join(':' + p for p in missing)} "
                         "but parameters does not declare it")
    if unused := sorted(query.parameters.keys() - used):
        raise ValueError(f"{where}: parameters {', '.join(unused)} never appear in the SQL "
                         "as :name")
    for pname, parameter in query.parameters.items():
        _check_parameter(f"{where}.parameters.{pname}", pname, parameter)


def arguments_model(name: str, query: NamedQuery) -> type[BaseModel]:
    fields: dict[str, Any] = {}
    for pname, parameter in query.parameters.items():
        kind = _python_type(parameter)
        if parameter.required:
            fields[pname] = (kind, _field(parameter))
        elif parameter.default is None:
            fields[pname] = (kind | None, _field(parameter, None))
        else:
            fields[pname] = (kind, _field(parameter, parameter.default))
    return create_model(f"{name}_arguments", __config__=_STRICT, **fields)


def _check_parameter(where: str, name: str, parameter: QueryParameter) -> None:
    bounded = parameter.minimum is not None or parameter.maximum is not None
    if not name.isidentifier() or name.startswith(("_", "model_")):
        raise ValueError(f"{where}: not a usable parameter name")
    if bounded and parameter.type not in ("integer", "number"):
        raise ValueError(f"{where}: minimum and maximum need type integer or number")
    if parameter.enum:
        if bounded:
            raise ValueError(f"{where}: give an enum or bounds, not both")
        try:
            TypeAdapter(list[_TYPES[parameter.type]]).validate_python(
                parameter.enum, strict=parameter.type != "number")
        except ValidationError:
            raise ValueError(f"{where}: enum values must be of type {parameter.type}") from None
    if not parameter.required and parameter.default is not None:
        constrained = Annotated[_python_type(parameter),
                                Field(ge=parameter.minimum, le=parameter.maximum)]
        try:
            TypeAdapter(constrained).validate_python(parameter.default,
                                                     strict=parameter.type != "number")
        except ValidationError:
            raise ValueError(f"{where}: the default {parameter.default!r} is not a valid "
                             "value") from None


def _python_type(parameter: QueryParameter) -> Any:
    if parameter.enum:
        return Literal[tuple(parameter.enum)]
    return _TYPES[parameter.type]


def _field(parameter: QueryParameter, default: Any = ...) -> Any:
    return Field(default, description=parameter.description or None,
                 ge=parameter.minimum, le=parameter.maximum)
