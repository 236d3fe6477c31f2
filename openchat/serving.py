"""The request pipeline: validated request -> preset -> prompt ids -> engine -> response.

`OpenChatServer` is what routes and typed APIs call. It never touches HTTP: results are
response objects (non-streamed) or async iterators of chunk dicts (streamed).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from openchat import responses
from openchat.config import Preset, Settings
from openchat.errors import APIError, engine_unavailable, invalid_param, model_not_found
from openchat.prompt import OpenChatTemplate, Turn
from openchat.protocol import (
    ChatCompletionRequest,
    ChatMessage,
    CompletionRequest,
    DetokenizeRequest,
    SamplingRequest,
    TokenizeRequest,
)
from openchat.streams import merge_streams
from openchat.structured import Constraint, build_constraint

logger = logging.getLogger(__name__)


def messages_to_turns(messages: list[ChatMessage]) -> list[Turn]:
    """OpenAI messages -> template turns; refuses what OpenChat cannot read."""
    turns = []
    for i, message in enumerate(messages):
        role = "system" if message.role == "developer" else message.role
        if role in ("tool", "function") or message.tool_calls:
            raise invalid_param(
                f"messages[{i}]", "Tool calls and tool messages need `tools`, which this "
                "service does not support yet.", code="unsupported_parameter",
            )
        text = _message_text(message, i)
        if message.name and role == "user":
            text = f"{message.name}: {text}"
        turns.append(Turn(role=role, content=text))
    return turns


def _message_text(message: ChatMessage, i: int) -> str:
    if message.content is None:
        if message.role == "assistant":
            return ""
        raise invalid_param(f"messages[{i}].content", f"messages[{i}].content is required.",
                            code="missing_required_parameter")
    if isinstance(message.content, str):
        return message.content
    texts = []
    for j, part in enumerate(message.content):
        if part.type != "text" or part.text is None:
            raise invalid_param(
                f"messages[{i}].content[{j}]",
                f"Content parts of type '{part.type}' are not supported: OpenChat-3.5 reads "
                "text only.", code="unsupported_content_type",
            )
        texts.append(part.text)
    return "".join(texts)


class OpenChatServer:
    def __init__(self, settings: Settings, engine, template: OpenChatTemplate):
        self.settings = settings
        self.engine = engine
        self.template = template
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

    def _check_engine(self) -> None:
        if not self.engine.is_healthy:
            raise engine_unavailable()

    def _check_n(self, request: SamplingRequest) -> None:
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
        if preset.system_prompt and not any(t.role == "system" for t in turns):
            turns.insert(0, Turn(role="system", content=preset.system_prompt))
        if instruction:
            turns.append(Turn(role="system", content=instruction))
        return self.template.render_chat(turns, condition or preset.condition)

    def constraint(self, request: SamplingRequest) -> Constraint | None:
        constraint = build_constraint(request.response_format, request.structured_outputs)
        if constraint is not None and request.stop:
            raise invalid_param("stop", "stop sequences cannot be combined with structured "
                                "output: they would cut the answer short.")
        if constraint is not None and request.ignore_eos:
            raise invalid_param("ignore_eos", "ignore_eos cannot be combined with "
                                "structured output.")
        return constraint

    @staticmethod
    def verify(constraint: Constraint | None, index: int, text: str, finish_reason) -> None:
        """The server-side guarantee: a finished (`stop`) structured answer is valid.
        A violation is a bug in the constraint path, surfaced rather than returned."""
        if constraint is None or finish_reason != "stop":
            return
        problem = constraint.validate(text)
        if problem is not None:
            logger.error("structured output violation (%s) in choice %d: %s; text=%r",
                         constraint.kind, index, problem, text[:2000])
            raise APIError(
                f"Choice {index} did not match the requested {constraint.kind} format "
                f"({problem}). This is a server error and has been logged.",
                status=500, type="server_error", code="structured_output_invalid",
            )

    def completion_prompts(self, prompt) -> list[tuple[list[int], str]]:
        """(token ids, prompt text for echo) for each prompt of a legacy request."""
        if isinstance(prompt, str):
            prompt = [prompt]
        if not prompt:
            raise invalid_param("prompt", "prompt must not be empty.")
        if all(isinstance(p, int) for p in prompt):
            prompt = [prompt]
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

    # -- chat ---------------------------------------------------------------------------

    def _check_chat_features(self, request: ChatCompletionRequest) -> None:
        if request.tools:
            raise invalid_param("tools", "tools are not supported yet.",
                                code="unsupported_parameter")

    async def chat(self, request: ChatCompletionRequest):
        """A ChatCompletion, or an async iterator of chunk dicts when streaming."""
        preset = self.preset(request.model)
        self._check_chat_features(request)
        self._check_n(request)
        constraint = self.constraint(request)
        prompt_ids = self.chat_prompt(request.messages, preset, request.condition,
                                      constraint.instruction if constraint else None)
        max_tokens = self.max_tokens_for(len(prompt_ids), request.requested_max_tokens())
        params = request.to_sampling_params(
            max_tokens=max_tokens, defaults=preset.sampling, logprobs=request.logprobs_count(),
            structured=constraint.params if constraint else None,
        )
        self._check_engine()
        request_id = f"chatcmpl-{uuid.uuid4().hex}"
        if request.stream:
            return self._stream_chat(request, request_id, prompt_ids, params, constraint)
        states = await self._collect(prompt_ids, params, request_id, request.n)
        for state in states:
            self.verify(constraint, state.index, state.text, state.finish_reason)
        return responses.chat_completion(
            request_id, request.model, states, len(prompt_ids),
            request.logprobs_count(), self.tokenizer.decode,
        )

    async def _stream_chat(self, request, request_id, prompt_ids, params,
                           constraint) -> AsyncIterator[dict]:
        chunker = responses.ChatChunker(request_id, request.model, request.include_usage_in_stream)
        top = request.logprobs_count()
        for index in range(request.n):
            yield chunker.role(index)
        completion_tokens = 0
        texts = [""] * request.n  # kept only to verify structured answers
        async for output in self.engine.generate(prompt_ids, params, request_id):
            for choice in output.outputs:
                completion_tokens += len(choice.token_ids)
                if constraint is not None:
                    texts[choice.index] += choice.text
                if choice.text or (choice.token_ids and top is not None):
                    logprobs = None
                    if top is not None:
                        logprobs = responses.chat_logprobs(
                            list(choice.token_ids), choice.logprobs or [], top,
                            self.tokenizer.decode,
                        )
                    yield chunker.content(choice.index, choice.text, logprobs)
                if choice.finish_reason is not None:
                    reason = responses.FINISH_REASONS.get(choice.finish_reason, "stop")
                    self.verify(constraint, choice.index, texts[choice.index], reason)
                    yield chunker.finish(choice.index, reason)
        if request.include_usage_in_stream:
            yield chunker.usage(len(prompt_ids), completion_tokens)

    async def _collect(self, prompt_ids, params, request_id, n) -> list[responses.ChoiceState]:
        states = [responses.ChoiceState(index=i) for i in range(n)]
        async for output in self.engine.generate(prompt_ids, params, request_id):
            for choice in output.outputs:
                states[choice.index].add(choice)
        return states

    # -- legacy completions -------------------------------------------------------------

    async def complete(self, request: CompletionRequest):
        """A Completion, or an async iterator of chunk dicts when streaming."""
        preset = self.preset(request.model)
        self._check_n(request)
        constraint = self.constraint(request)
        prompts = self.completion_prompts(request.prompt)
        params_list = [
            request.to_sampling_params(
                max_tokens=self.max_tokens_for(len(ids), request.max_tokens),
                defaults=preset.sampling, logprobs=request.logprobs,
                structured=constraint.params if constraint else None,
            )
            for ids, _ in prompts
        ]
        self._check_engine()
        request_id = f"cmpl-{uuid.uuid4().hex}"
        prompt_tokens = sum(len(ids) for ids, _ in prompts)
        if request.stream:
            return self._stream_completion(request, request_id, prompts, params_list,
                                           constraint)
        collected = await asyncio.gather(*(
            self._collect(ids, params, f"{request_id}-{i}", request.n)
            for i, ((ids, _), params) in enumerate(zip(prompts, params_list))
        ))
        for states in collected:
            for state in states:
                self.verify(constraint, state.index, state.text, state.finish_reason)
        choices = [
            (i * request.n + state.index, text if request.echo else "", state)
            for i, ((_, text), states) in enumerate(zip(prompts, collected))
            for state in states
        ]
        return responses.completion(
            request_id, request.model, choices, prompt_tokens,
            request.logprobs, self.tokenizer.decode,
        )

    async def _stream_completion(self, request, request_id, prompts, params_list, constraint):
        created = int(time.time())
        model, n = request.model, request.n
        if request.echo:
            for i, (_, text) in enumerate(prompts):
                for j in range(n):
                    yield responses.completion_chunk(request_id, model, created, i * n + j, text)
        streams = [
            self.engine.generate(ids, params, f"{request_id}-{i}")
            for i, ((ids, _), params) in enumerate(zip(prompts, params_list))
        ]
        offsets: dict[int, int] = {}
        texts: dict[int, str] = {}  # kept only to verify structured answers
        completion_tokens = 0
        async for prompt_index, output in merge_streams(streams):
            for choice in output.outputs:
                index = prompt_index * n + choice.index
                completion_tokens += len(choice.token_ids)
                logprobs = None
                if request.logprobs is not None:
                    logprobs = responses.completion_logprobs(
                        list(choice.token_ids), choice.logprobs or [], request.logprobs,
                        self.tokenizer.decode, offsets.get(index, 0),
                    )
                offsets[index] = offsets.get(index, 0) + len(choice.text)
                if constraint is not None:
                    texts[index] = texts.get(index, "") + choice.text
                reason = None
                if choice.finish_reason is not None:
                    reason = responses.FINISH_REASONS.get(choice.finish_reason, "stop")
                    self.verify(constraint, index, texts.get(index, ""), reason)
                if choice.text or reason or logprobs:
                    yield responses.completion_chunk(
                        request_id, model, created, index, choice.text, reason, logprobs
                    )
        if request.include_usage_in_stream:
            yield responses.completion_usage_chunk(
                request_id, model, created, sum(len(ids) for ids, _ in prompts),
                completion_tokens,
            )

    # -- models and tokens --------------------------------------------------------------

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
