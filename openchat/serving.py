"""The request pipeline: validated request -> preset -> prompt ids -> engine -> response.

`OpenChatServer` is what routes and typed APIs call: it holds the shared steps (presets,
prompts, context limits, constraints); the chat and legacy completion flows live in
chat.py and completions.py. It never touches HTTP: results are response objects
(non-streamed) or async iterators of chunk dicts (streamed).
"""

from __future__ import annotations

from typing import Any

from openchat import responses
from openchat.chat import chat_completion
from openchat.completions import text_completion
from openchat.config import Preset, Settings
from openchat.errors import APIError, engine_unavailable, invalid_param, model_not_found
from openchat.conversation import messages_to_turns
from openchat.prompt import OpenChatTemplate, Turn
from openchat.protocol import (
    ChatCompletionRequest,
    ChatMessage,
    CompletionRequest,
    DetokenizeRequest,
    SamplingRequest,
    TokenizeRequest,
)
from openchat.structured import Constraint, build_constraint
from openchat.toolloop import chat_with_server_tools, check_request
from tools.registry import Registry


class OpenChatServer:
    def __init__(self, settings: Settings, engine, template: OpenChatTemplate,
                 tools: Registry | None = None, documents=None, embedder=None):
        self.settings = settings
        self.engine = engine
        self.template = template
        self.tools = tools if tools is not None else Registry()
        self.documents = documents  # tools.documents.DocumentStore, for ask and /v1/collections
        self.embedder = embedder  # tools.embeddings.Embedder, for /v1/embeddings
        self.tokenizer = template.tokenizer
        self.max_model_len = engine.max_model_len

    # -- shared steps -------------------------------------------------------------------

    def preset(self, model: str | None) -> Preset:
        if model is None:
            return self.settings.presets[self.settings.default_preset]
        preset = self.settings.preset_for_model(model)
        if preset is None:
            raise model_not_found(model)
        return preset

    def check_engine(self) -> None:
        if not self.engine.is_healthy:
            raise engine_unavailable()

    def check_n(self, request: SamplingRequest) -> None:
        limit = self.settings.limits.max_n
        if request.n > limit:
            raise invalid_param("n", f"n must be at most {limit}.")

    def max_tokens_for(self, prompt_len: int, requested: int | None) -> int:
        """`requested`, or what is left of the context; 400 when it does not fit."""
        limit = self.max_model_len
        if requested is None and prompt_len < limit:
            return limit - prompt_len
        if requested is not None and prompt_len + requested <= limit:
            return requested
        asked = f"{prompt_len + (requested or 0)} tokens ({prompt_len} in the prompt"
        asked += f", {requested} in the completion)" if requested else ")"
        raise APIError(
            f"This model's maximum context length is {limit} tokens. However, you requested "
            f"{asked}. Please reduce the length of the messages or completion.",
            param="messages" if requested is None else "max_tokens",
            code="context_length_exceeded",
        )

    def chat_prompt(self, messages: list[ChatMessage], preset: Preset,
                    condition: str | None, instruction: str | None = None) -> list[int]:
        """Token ids for a chat request; `instruction` (e.g. the JSON schema to follow)
        joins the end of the system block."""
        if len(messages) > self.settings.limits.max_messages:
            raise invalid_param("messages", f"At most {self.settings.limits.max_messages} "
                                "messages are allowed.")
        turns = messages_to_turns(messages)
        self.check_content_size(sum(len(t.content) for t in turns), "messages")
        if preset.system_prompt and not any(t.role == "system" for t in turns):
            turns.insert(0, Turn(role="system", content=preset.system_prompt))
        if instruction:
            turns.append(Turn(role="system", content=instruction))
        return self.template.render_chat(turns, condition or preset.condition)

    def check_content_size(self, chars: int, param: str) -> None:
        limit = self.settings.limits.max_content_chars
        if chars > limit:
            raise APIError(f"The request holds {chars} characters of text; at most {limit} "
                           "are accepted (far more than the model's context).",
                           param=param, code="context_length_exceeded")

    def constraint(self, request: SamplingRequest) -> Constraint | None:
        constraint = build_constraint(request.response_format, request.structured_outputs)
        if constraint is not None and request.stop:
            raise invalid_param("stop", "stop sequences cannot be combined with structured "
                                "output: they would cut the answer short.")
        if constraint is not None and request.ignore_eos:
            raise invalid_param("ignore_eos", "ignore_eos cannot be combined with "
                                "structured output.")
        return constraint

    def completion_prompts(self, prompt) -> list[tuple[list[int], str]]:
        """(token ids, prompt text for echo) for each prompt of a legacy request."""
        if isinstance(prompt, str):
            prompt = [prompt]
        if not prompt:
            raise invalid_param("prompt", "prompt must not be empty.")
        if all(isinstance(p, int) for p in prompt):
            prompt = [prompt]
        self.check_content_size(sum(len(p) for p in prompt if isinstance(p, str)), "prompt")
        prompts = []
        for p in prompt:
            if isinstance(p, str):
                prompts.append((self.template.render_text(p), p))
                continue
            if not p:
                raise invalid_param("prompt", "a token-id prompt must not be empty.")
            if not all(self.tokenizer.is_valid_id(t) for t in p):
                raise invalid_param("prompt", "prompt holds token ids outside the vocabulary.")
            prompts.append((list(p), self.tokenizer.decode(p)))
        return prompts

    async def collect(self, prompt_ids, params, request_id, n) -> list[responses.ChoiceState]:
        """Run one engine request to the end, gathering each choice's deltas."""
        states = [responses.ChoiceState(index=i) for i in range(n)]
        async for output in self.engine.generate(prompt_ids, params, request_id):
            for choice in output.outputs:
                states[choice.index].add(choice)
        return states

    async def chat(self, request: ChatCompletionRequest, allowed=None):
        """A ChatCompletion, or an async iterator of chunk dicts when streaming.
        `allowed(tool)` says whether the caller may use a server tool (default: all)."""
        if request.server_tools is not None:
            tools = check_request(self, request, allowed)
            return await chat_with_server_tools(self, request, tools)
        return await chat_completion(self, request)

    async def complete(self, request: CompletionRequest):
        """A Completion, or an async iterator of chunk dicts when streaming."""
        return await text_completion(self, request)

    # -- models and tokens --------------------------------------------------------------

    def server_tools(self) -> list[dict[str, Any]]:
        return [{**t.definition(), "scope": t.scope} for t in self.tools]

    def models(self) -> list[dict[str, Any]]:
        return [self.model_card(p) for p in self.settings.presets.values()]

    def model_card(self, preset: Preset) -> dict[str, Any]:
        return {
            "id": preset.model_id,
            "object": "model",
            "created": 0,
            "owned_by": "openchat",
            "root": self.settings.model,
            "max_model_len": self.max_model_len,
            "description": preset.description,
        }

    def tokenize(self, request: TokenizeRequest) -> dict[str, Any]:
        preset = self.preset(request.model)
        if request.messages is not None:
            ids = self.chat_prompt(request.messages, preset, request.condition)
        elif request.add_special_tokens:
            ids = self.template.render_text(request.prompt)
        else:
            ids = self.tokenizer.encode(request.prompt)
        return {"tokens": ids, "count": len(ids), "max_model_len": self.max_model_len}

    def detokenize(self, request: DetokenizeRequest) -> dict[str, Any]:
        self.preset(request.model)
        bad = [t for t in request.tokens if not self.tokenizer.is_valid_id(t)]
        if bad:
            raise invalid_param("tokens", f"token id {bad[0]} is outside the vocabulary.")
        return {"prompt": self.tokenizer.decode(request.tokens, skip_special_tokens=False)}
