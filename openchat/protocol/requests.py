"""Request models for the OpenAI-compatible API, and their conversion to vLLM parameters.

Bounds live on the fields (`ge`, `le`), so validation and the OpenAPI schema come from
one place; a value out of range becomes a 400 naming the parameter. Unknown fields are
refused, as OpenAI does, so a misspelt parameter is not silently ignored.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from openchat.config import Condition, SamplingDefaults
from openchat.protocol.formats import ResponseFormat, StructuredOutputs
from openchat.vocabulary import END_OF_TURN_ID, VOCAB_SIZE

if TYPE_CHECKING:
    from vllm import SamplingParams
    from vllm.sampling_params import StructuredOutputsParams

MAX_STOP_SEQUENCES = 4
TAIL_FILTERS = ("top_p", "top_k", "min_p")  # sampling filters a preset sets as one
FLOAT32_TINY = 1e-30  # comfortably above float32's smallest normal number (1.18e-38)
INT64 = 2**63


MAX_JSON_DEPTH = 64


def json_depth(value: Any) -> int:
    """Nesting depth of parsed JSON, without recursion (deep input must not crash us)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            items = item.values()
        elif isinstance(item, list):
            items = item
        else:
            continue
        deepest = max(deepest, depth)
        if deepest > MAX_JSON_DEPTH:
            break
        stack.extend((child, depth + 1) for child in items)
    return deepest


class StrictModel(BaseModel):
    # Unknown fields are refused, and wrong JSON types are not coerced ("5" is not a
    # max_tokens, 1 is not a boolean): a 400 invalid_type, as OpenAI answers.
    model_config = ConfigDict(extra="forbid", strict=True)

    @model_validator(mode="before")
    @classmethod
    def _not_too_deep(cls, data: Any) -> Any:
        if isinstance(data, dict) and json_depth(data) > MAX_JSON_DEPTH:
            raise ValueError(f"the request nests JSON deeper than {MAX_JSON_DEPTH} levels")
        return data


class StreamOptions(StrictModel):
    include_usage: bool = False


class ContentPart(BaseModel):
    """A part of a message's content; only text parts can be rendered for OpenChat."""

    model_config = ConfigDict(extra="allow")

    type: str
    text: str | None = None


class ChatMessage(BaseModel):
    # Clients echo back assistant messages with fields we do not use (refusal, audio,
    # annotations); those are ignored rather than refused.
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[ContentPart] | None = None
    name: str | None = Field(None, max_length=256)
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str | None = None


class SamplingRequest(StrictModel):
    """Parameters shared by chat and legacy completions."""

    model: str
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    n: int = Field(1, ge=1)
    stop: str | list[str] | None = None
    seed: int | None = Field(None, ge=-INT64, lt=INT64)
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    logit_bias: dict[str, float] | None = None
    user: str | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    # Extensions understood by vLLM-aware clients.
    top_k: int | None = Field(None, ge=-1)
    min_p: float | None = Field(None, ge=0, le=1)
    # Logits are divided by it: far below 1 they overflow float32 (0.01 is already extreme).
    repetition_penalty: float | None = Field(None, ge=0.01, le=2)
    ignore_eos: bool = False
    # Structured output (formats.py): OpenAI's field, or vLLM's extension.
    response_format: ResponseFormat | None = None
    structured_outputs: StructuredOutputs | None = None
    # Accepted for compatibility; they do not change generation here.
    store: bool | None = None
    metadata: dict[str, str] | None = None
    service_tier: str | None = None

    @field_validator("stop")
    @classmethod
    def _check_stop(cls, stop: str | list[str] | None) -> list[str] | None:
        if stop is None:
            return None
        stops = [stop] if isinstance(stop, str) else stop
        if len(stops) > MAX_STOP_SEQUENCES:
            raise ValueError(f"at most {MAX_STOP_SEQUENCES} stop sequences are allowed")
        if any(s == "" for s in stops):
            raise ValueError("stop sequences must not be empty")
        return stops or None

    @field_validator("temperature", "top_p", "presence_penalty", "frequency_penalty",
                     "min_p")
    @classmethod
    def _fits_float32(cls, value: float | None) -> float | None:
        # The engine samples in float32: a value it would round to zero (5e-324) is not
        # the value asked for, and some (a zero top_p) break sampling.
        if value is not None and value != 0 and abs(value) < FLOAT32_TINY:
            raise ValueError(f"{value!r} is too small for the engine's float32 "
                             "arithmetic; use 0 or a value of at least 1e-30")
        return value

    @field_validator("logit_bias")
    @classmethod
    def _check_logit_bias(cls, bias: dict[str, float] | None) -> dict[str, float] | None:
        for key, value in (bias or {}).items():
            if not key.lstrip("-").isdigit() or not 0 <= int(key) < VOCAB_SIZE:
                raise ValueError(f"logit_bias key {key!r} is not a token id below {VOCAB_SIZE}")
            if not -100 <= value <= 100:
                raise ValueError(f"logit_bias value for {key} must be between -100 and 100")
        return bias

    @model_validator(mode="after")
    def _stream_options_need_stream(self):
        if self.stream_options is not None and not self.stream:
            raise ValueError("stream_options is only allowed when stream is true")
        return self

    @property
    def wants_structured_output(self) -> bool:
        """A JSON or grammar constraint was asked for (plain `text` format is none)."""
        return (self.response_format is not None and self.response_format.type != "text"
                or self.structured_outputs is not None)

    @property
    def include_usage_in_stream(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)

    def requested_max_tokens(self) -> int | None:
        return self.max_tokens

    def sampling_values(self, defaults: SamplingDefaults) -> dict[str, Any]:
        """Request values, falling back to the preset's, then to vLLM's defaults. The
        filters that cut the unlikely tail (top_p, top_k, min_p) go together: a request
        that picks one of them gets only its own, not the preset's on top."""
        values: dict[str, Any] = {}
        own_filter = any(getattr(self, name) is not None for name in TAIL_FILTERS)
        for name in SamplingDefaults.model_fields:
            value = getattr(self, name)
            if value is None and not (own_filter and name in TAIL_FILTERS):
                value = getattr(defaults, name)
            if value is not None:
                values[name] = value
        return values

    def to_sampling_params(
        self,
        *,
        max_tokens: int,
        defaults: SamplingDefaults,
        logprobs: int | None = None,
        structured: StructuredOutputsParams | None = None,
    ) -> SamplingParams:
        """vLLM SamplingParams for this request (deltas, for streaming and collecting);
        `structured` is the StructuredOutputsParams of the request's constraint, if any."""
        from vllm.sampling_params import RequestOutputKind, SamplingParams

        return SamplingParams(
            n=self.n,
            max_tokens=max_tokens,
            stop=self.stop,
            # OpenChat ends a turn with <|end_of_turn|>; ignore_eos lets it run on.
            stop_token_ids=None if self.ignore_eos else [END_OF_TURN_ID],
            seed=self.seed,
            logit_bias={int(k): v for k, v in self.logit_bias.items()} if self.logit_bias else None,
            ignore_eos=self.ignore_eos,
            logprobs=logprobs,
            structured_outputs=structured,
            output_kind=RequestOutputKind.DELTA,
            **self.sampling_values(defaults),
        )


class ChatCompletionRequest(SamplingRequest):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=20)
    condition: Condition | None = Field(
        None, description="OpenChat condition; default: the preset's ('GPT4 Correct')."
    )
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    # Extension: tools the service runs itself (toolloop.py; GET /v1/server_tools).
    server_tools: list[str] | None = Field(None, max_length=64, description="Names of "
                                           "server-side tools the model may call.")
    max_tool_steps: int | None = Field(None, ge=2, description="Generations at most, the "
                                       "last without server tools; default: configured.")

    @model_validator(mode="after")
    def _top_logprobs_need_logprobs(self):
        if self.top_logprobs is not None and not self.logprobs:
            raise ValueError("top_logprobs requires logprobs to be true")
        return self

    def requested_max_tokens(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens

    def logprobs_count(self) -> int | None:
        return (self.top_logprobs or 0) if self.logprobs else None


PromptInput = str | list[str] | list[int] | list[list[int]]


class CompletionRequest(SamplingRequest):
    prompt: PromptInput
    max_tokens: int | None = Field(16, ge=1)
    logprobs: int | None = Field(None, ge=0, le=5)
    echo: bool = False
    best_of: int | None = Field(None, ge=1)
    suffix: str | None = None

    @model_validator(mode="after")
    def _check_legacy_options(self):
        if self.suffix:
            raise ValueError("suffix is not supported: OpenChat-3.5 has no insertion mode")
        if self.best_of is not None and self.best_of != self.n:
            raise ValueError("best_of is only supported equal to n")
        if self.echo and self.logprobs is not None:
            raise ValueError("echo together with logprobs is not supported")
        return self


class TokenizeRequest(StrictModel):
    model: str | None = None
    prompt: str | None = None
    messages: list[ChatMessage] | None = None
    condition: Condition | None = None
    add_special_tokens: bool = Field(
        True, description="For `prompt`: put BOS first, as completions do."
    )

    @model_validator(mode="after")
    def _one_input(self):
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("give exactly one of prompt or messages")
        return self


class DetokenizeRequest(StrictModel):
    model: str | None = None
    tokens: list[int]


class EmbeddingRequest(StrictModel):
    model: str
    input: str | list[str] | list[int] | list[list[int]]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(None, ge=1)
    user: str | None = None
