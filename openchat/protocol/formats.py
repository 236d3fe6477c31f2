"""Structured-output request fields as they cross the wire: OpenAI's `response_format` and
vLLM's `structured_outputs` extension. What they mean for decoding (constraints, schema
checks, validators) is generation/constraints.py.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator


class StructuredOutputs(BaseModel):
    """vLLM's request extension, with the same names and meaning: exactly one of these."""

    model_config = ConfigDict(extra="forbid", strict=True)

    json_: dict[str, Any] | bool | None = Field(None, alias="json")
    regex: str | None = Field(None, min_length=1)
    choice: list[str] | None = Field(None, min_length=1)
    grammar: str | None = Field(None, min_length=1)

    @model_validator(mode="after")
    def _exactly_one(self):
        given = [k for k in ("json_", "regex", "choice", "grammar") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of json, regex, choice or grammar")
        return self


class JSONSchemaFormat(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    name: str = Field(pattern=r"^[a-zA-Z0-9_-]{1,64}$")
    description: str | None = None
    schema_: dict[str, Any] = Field(default_factory=dict, alias="schema")
    strict: bool | None = None


class ResponseFormat(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    type: str
    json_schema: JSONSchemaFormat | None = None

    @model_validator(mode="after")
    def _check(self):
        if self.type not in ("text", "json_object", "json_schema"):
            raise ValueError("type must be 'text', 'json_object' or 'json_schema'")
        if self.type == "json_schema" and self.json_schema is None:
            raise ValueError("json_schema is required when type is 'json_schema'")
        return self
