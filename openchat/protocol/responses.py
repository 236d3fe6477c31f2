"""The OpenAI Responses API as it crosses the wire: `POST /v1/responses` and its input items.

Field names and meanings follow the `openai` package (`openai.types.responses`). Unknown
fields are refused, as on chat; fields this model cannot honour are refused with a 400
that names them rather than silently ignored (`reasoning` with an effort, `background`,
hosted tools); a few that change nothing here are accepted and documented as ignored
(docs/responses.md). How a request becomes a chat generation is
generation/responses.py.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    TypeAdapter,
    model_validator,
)

from openchat.config import Condition
from openchat.protocol.requests import INT64, StrictModel


class _Item(BaseModel):
    # Clients echo back items they received (ids, statuses, annotations): ignored.
    model_config = ConfigDict(extra="ignore")


class TextPart(_Item):
    type: Literal["input_text", "output_text", "text"]
    text: str


class MessageItem(_Item):
    type: Literal["message"] = "message"
    role: Literal["user", "assistant", "system", "developer"]
    content: str | list[TextPart]

    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class FunctionCallItem(_Item):
    type: Literal["function_call"]
    call_id: str = Field(min_length=1, max_length=256)
    name: str = Field(min_length=1, max_length=64)
    arguments: str
    # "incomplete": cut off by max_output_tokens, its arguments unfinished JSON
    status: str | None = None


class FunctionCallOutputItem(_Item):
    type: Literal["function_call_output"]
    call_id: str = Field(min_length=1, max_length=256)
    output: str | list[TextPart]

    def text(self) -> str:
        if isinstance(self.output, str):
            return self.output
        return "".join(part.text for part in self.output)


def _item_kind(value: Any) -> str:
    """Easy input messages (`{"role", "content"}`) carry no type."""
    kind = (value.get("type") if isinstance(value, dict) else getattr(value, "type", None))
    if kind is not None and not isinstance(kind, str):
        return None  # a 400 naming the item, not a crash on an unhashable tag
    if kind in ("file_search_call", "mcp_call"):
        return "server_call"
    return kind or "message"


class ServerCallItem(BaseModel):
    """A call the service ran itself (file_search, a server tool), echoed back by a client
    or kept in a stored conversation: its result already shaped the text that followed,
    so it is listed but not put into the prompt again."""

    model_config = ConfigDict(extra="allow")
    type: Literal["file_search_call", "mcp_call"]
    id: str


InputItem = Annotated[
    Annotated[MessageItem, Tag("message")]
    | Annotated[FunctionCallItem, Tag("function_call")]
    | Annotated[FunctionCallOutputItem, Tag("function_call_output")]
    | Annotated[ServerCallItem, Tag("server_call")],
    Discriminator(_item_kind),
]
Item = MessageItem | FunctionCallItem | FunctionCallOutputItem | ServerCallItem

INPUT_ITEM: TypeAdapter[Item] = TypeAdapter(InputItem)


class FunctionTool(StrictModel):
    type: Literal["function"]
    name: str = Field(pattern=r"^[a-zA-Z0-9_-]{1,64}$")
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None

    def as_chat_tool(self) -> dict[str, Any]:
        function: dict[str, Any] = {"name": self.name}
        if self.description is not None:
            function["description"] = self.description
        if self.parameters is not None:
            function["parameters"] = self.parameters
        if self.strict is not None:
            function["strict"] = self.strict
        return {"type": "function", "function": function}


    def as_response_tool(self) -> dict[str, Any]:
        return {**self.model_dump(exclude_none=True), "parameters": self.parameters,
                "strict": self.strict}


class FileSearchTool(StrictModel):
    """OpenAI's hosted file search, run here over the service's document collections:
    `vector_store_ids` name collections (GET /v1/collections)."""

    type: Literal["file_search"]
    vector_store_ids: list[str] = Field(min_length=1, max_length=16)
    max_num_results: int | None = Field(None, ge=1, le=50)
    filters: dict[str, Any] | None = None
    ranking_options: dict[str, Any] | None = None  # accepted; plain cosine ranking here

    @model_validator(mode="after")
    def _no_filters(self) -> FileSearchTool:
        if self.filters is not None:
            raise ValueError("file_search filters are not supported")
        return self

    def as_response_tool(self) -> dict[str, Any]:
        return {"type": "file_search", "vector_store_ids": self.vector_store_ids,
                "max_num_results": self.max_num_results, "filters": None,
                "ranking_options": self.ranking_options}


class NamespaceTool(StrictModel):
    """Function tools grouped under a name (the Codex CLI sends its sub-agent tools so).
    The model sees the functions themselves; a call to one names its namespace."""

    type: Literal["namespace"]
    name: str = Field(pattern=r"^[a-zA-Z0-9_.-]{1,64}$")
    description: str | None = None
    tools: list[FunctionTool] = Field(max_length=128)

    def as_response_tool(self) -> dict[str, Any]:
        return {"type": "namespace", "name": self.name, "description": self.description,
                "tools": [tool.as_response_tool() for tool in self.tools]}


# Tools that run on OpenAI's own servers. None of them exists here, so they are left out of
# the model's tools (docs/responses.md) rather than refused: clients such as the Codex CLI
# send web_search by default.
IGNORED_HOSTED_TOOLS = frozenset({
    "web_search", "web_search_preview", "web_search_2025_08_26",
    "web_search_preview_2025_03_11", "code_interpreter", "image_generation", "mcp",
    "tool_search",
})


class IgnoredTool(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: str

    def as_response_tool(self) -> dict[str, Any]:
        return self.model_dump()


def _tool_kind(value: Any) -> str | None:
    kind = value.get("type") if isinstance(value, dict) else getattr(value, "type", None)
    if not isinstance(kind, str):
        return None  # a 400 naming the tool, not a crash on an unhashable tag
    if kind in IGNORED_HOSTED_TOOLS:
        return "ignored"
    return kind  # anything else that is not below: an error naming the tag


ResponseTool = Annotated[
    Annotated[FunctionTool, Tag("function")] | Annotated[FileSearchTool, Tag("file_search")]
    | Annotated[NamespaceTool, Tag("namespace")] | Annotated[IgnoredTool, Tag("ignored")],
    Discriminator(_tool_kind),
]


class NamedFunctionChoice(StrictModel):
    type: Literal["function"]
    name: str


class HostedToolChoice(StrictModel):
    type: Literal["file_search"]  # the one hosted tool served here


class TextFormat(StrictModel):
    type: Literal["text", "json_object", "json_schema"]
    name: str | None = Field(None, pattern=r"^[a-zA-Z0-9_-]{1,64}$")
    description: str | None = None
    schema_: dict[str, Any] | None = Field(None, alias="schema")
    strict: bool | None = None

    @model_validator(mode="after")
    def _schema_needs_name(self) -> TextFormat:
        if self.type == "json_schema" and (self.name is None or self.schema_ is None):
            raise ValueError("a json_schema format needs a name and a schema")
        return self


class TextConfig(StrictModel):
    format: TextFormat | None = None
    verbosity: Literal["low", "medium", "high"] | None = None  # accepted, ignored


class ReasoningConfig(StrictModel):
    effort: str | None = None
    summary: str | None = None
    generate_summary: str | None = None


class ResponseStreamOptions(StrictModel):
    include_obfuscation: bool | None = None  # no obfuscation here: accepted, ignored


class ResponseRequest(StrictModel):
    # Wrong JSON types are refused, not coerced ("5" is not a max_output_tokens).
    model_config = ConfigDict(extra="forbid", strict=True)

    model: str
    input: list[InputItem] | str = Field(min_length=1)  # list first: its errors lead
    instructions: str | None = None
    max_output_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    tools: list[ResponseTool] | None = Field(None, max_length=128)
    tool_choice: (Literal["auto", "required", "none"] | NamedFunctionChoice | HostedToolChoice
                  | None) = None
    parallel_tool_calls: bool | None = None
    text: TextConfig | None = None
    store: bool = True
    previous_response_id: str | None = Field(None, max_length=128)
    metadata: dict[str, str] | None = Field(None, max_length=16)
    user: str | None = None
    stream: bool = False
    stream_options: ResponseStreamOptions | None = None
    # Extensions, as on chat completions.
    seed: int | None = Field(None, ge=-INT64, lt=INT64)
    condition: Condition | None = None
    server_tools: list[str] | None = Field(None, max_length=64, description="Names of "
                                           "the service's own tools it may run (as on chat).")
    max_tool_steps: int | None = Field(None, ge=2, description="Generations at most with "
                                       "server tools (as on chat).")
    # Accepted; they change nothing on this service (docs/responses.md).
    client_metadata: dict[str, Any] | None = None  # the Codex CLI's turn metadata
    reasoning: ReasoningConfig | None = None
    truncation: Literal["auto", "disabled"] | None = None
    include: list[str] | None = None
    service_tier: str | None = None
    safety_identifier: str | None = None
    prompt_cache_key: str | None = None
    prompt_cache_retention: Literal["in_memory", "24h"] | None = None
    prompt_cache_options: dict[str, Any] | None = None
    context_management: list[dict[str, Any]] | None = None  # we never compact a context
    max_tool_calls: int | None = Field(None, ge=1)  # only hosted tools count; we have none
    image: dict[str, Any] | None = None
    access_programs: dict[str, Any] | None = None
    background_options: dict[str, Any] | None = None
    # Accepted only when unset: honouring them is beyond this service.
    background: bool | None = None
    conversation: str | dict[str, Any] | None = None
    prompt: dict[str, Any] | None = None
    moderation: dict[str, Any] | None = None
    top_logprobs: int | None = Field(None, ge=0, le=20)

    @model_validator(mode="after")
    def _honourable(self) -> ResponseRequest:
        if self.reasoning is not None and self.reasoning.effort not in (None, "none"):
            raise ValueError("reasoning is not supported: OpenChat-3.5 is not a reasoning "
                             "model (leave reasoning unset)")
        if self.background:
            raise ValueError("background responses are not supported; stream instead")
        if self.conversation is not None:
            raise ValueError("conversation objects are not supported; chain responses "
                             "with previous_response_id")
        if self.prompt is not None:
            raise ValueError("stored prompt templates are not supported; send "
                             "instructions and input")
        if self.moderation is not None:
            raise ValueError("moderation is not available on this service")
        if self.top_logprobs:
            raise ValueError("logprobs are not available on /v1/responses; use "
                             "/v1/chat/completions with logprobs")
        if self.stream_options is not None and not self.stream:
            raise ValueError("stream_options is only allowed when stream is true")
        return self

    def input_items(self) -> list[Item]:
        if isinstance(self.input, str):
            return [MessageItem(role="user", content=self.input)]
        return list(self.input)

    def function_tools(self) -> list[FunctionTool]:
        """The client's functions the model is offered, namespaces flattened."""
        functions = []
        for tool in self.tools or []:
            if isinstance(tool, FunctionTool):
                functions.append(tool)
            elif isinstance(tool, NamespaceTool):
                functions += tool.tools
        return functions

    def namespaces(self) -> dict[str, str]:
        """Function name -> the namespace it was offered in."""
        return {function.name: tool.name for tool in self.tools or []
                if isinstance(tool, NamespaceTool) for function in tool.tools}

    def file_search(self) -> FileSearchTool | None:
        return next((tool for tool in self.tools or [] if isinstance(tool, FileSearchTool)),
                    None)

    @property
    def text_format(self) -> TextFormat | None:
        return self.text.format if self.text is not None else None


class InputItemsQuery(StrictModel):
    """`GET /v1/responses/{id}/input_items` paging, as OpenAI pages lists."""

    limit: int = Field(20, ge=1, le=100)
    order: Literal["asc", "desc"] = "desc"
    after: str | None = None
    before: str | None = None
