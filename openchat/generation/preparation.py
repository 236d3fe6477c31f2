"""Validated request -> everything one engine request needs, decided before the engine
sees it: the preset, prompt token ids, context limits, the decoding constraint (tools or
structured output) and vLLM's SamplingParams.

A `Preparer` knows only settings, the template and the context length; it raises
`APIError` (a 4xx) for anything the engine must not be given, and returns frozen
`PreparedChat` / `PreparedCompletion` values that the flows run as they are.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from openchat.config import Preset, Settings
from openchat.generation.constraints import Constraint, build_constraint
from openchat.generation.conversation import messages_to_turns
from openchat.generation.template import OpenChatTemplate, Turn
from openchat.generation.toolformat import ToolPlan, check_no_tool_conflicts, plan_tools
from openchat.protocol.errors import APIError, invalid_param, model_not_found
from openchat.protocol.requests import (
    ChatCompletionRequest,
    ChatMessage,
    CompletionRequest,
    PromptInput,
    SamplingRequest,
)

if TYPE_CHECKING:
    from vllm import SamplingParams


@dataclass(frozen=True)
class PreparedChat:
    """One chat generation, ready for the engine."""

    prompt_ids: list[int]
    params: SamplingParams
    plan: ToolPlan | None  # the tools offered, when there are any
    constraint: Constraint | None  # structured output, when asked for


@dataclass(frozen=True)
class Prompt:
    """One legacy-completion prompt: its token ids and its text (echoed back on request)."""

    ids: list[int]
    text: str


@dataclass(frozen=True)
class PreparedCompletion:
    """A legacy completion: one engine request per prompt, each with its parameters."""

    prompts: list[Prompt]
    params: list[SamplingParams]
    constraint: Constraint | None

    @property
    def prompt_tokens(self) -> int:
        return sum(len(p.ids) for p in self.prompts)


class Preparer:
    def __init__(self, settings: Settings, template: OpenChatTemplate,
                 max_model_len: int) -> None:
        self.settings = settings
        self.template = template
        self.max_model_len = max_model_len

    def preset(self, model: str | None) -> Preset:
        if model is None:
            return self.settings.presets[self.settings.default_preset]
        preset = self.settings.preset_for_model(model)
        if preset is None:
            raise model_not_found(model)
        return preset

    def chat(self, request: ChatCompletionRequest) -> PreparedChat:
        """Preset, tools or schema, prompt ids and sampling for one chat generation."""
        from vllm.sampling_params import StructuredOutputsParams

        preset = self.preset(request.model)
        self._check_n(request)
        plan = plan_tools(request.tools, request.tool_choice, request.parallel_tool_calls)
        check_no_tool_conflicts(plan, request)
        constraint = self._constraint(request)
        if plan is not None:
            # Beside tools, response_format shapes the content when the model does not
            # call (auto); when it must call, the content format does not apply.
            constraint = constraint if plan.mode == "auto" else None
            instruction = plan.instruction()
            if constraint is not None and constraint.instruction:
                instruction += "\nIf you answer without calling a function: " + \
                    constraint.instruction
            start = plan.determined_start()
            if start and request.messages[-1].role != "assistant":  # not already continuing one
                plan = replace(plan, prefilled=start)
            structured = StructuredOutputsParams(structural_tag=plan.structural_tag(
                constraint.schema if constraint is not None else None))
        else:
            instruction = constraint.instruction if constraint else None
            structured = constraint.params if constraint else None
        prompt_ids = self.chat_prompt(request.messages, preset, request.condition, instruction,
                                      plan.prefilled if plan is not None else "")
        max_tokens = self._max_tokens(len(prompt_ids), request.requested_max_tokens())
        params = request.to_sampling_params(
            max_tokens=max_tokens, defaults=preset.sampling, logprobs=request.logprobs_count(),
            structured=structured,
        )
        return PreparedChat(prompt_ids, params, plan, constraint)

    def completion(self, request: CompletionRequest) -> PreparedCompletion:
        """Prompts (text or token ids), and sampling for each, of a legacy completion."""
        preset = self.preset(request.model)
        self._check_n(request)
        constraint = self._constraint(request)
        prompts = self._completion_prompts(request.prompt)
        params = [
            request.to_sampling_params(
                max_tokens=self._max_tokens(len(prompt.ids), request.max_tokens),
                defaults=preset.sampling, logprobs=request.logprobs,
                structured=constraint.params if constraint else None,
            )
            for prompt in prompts
        ]
        return PreparedCompletion(prompts, params, constraint)

    def chat_prompt(self, messages: list[ChatMessage], preset: Preset,
                    condition: str | None, instruction: str | None = None,
                    answer_start: str = "") -> list[int]:
        """Token ids for a chat request; `instruction` (e.g. the JSON schema to follow)
        joins the end of the system block; `answer_start` opens the assistant's answer."""
        if len(messages) > self.settings.limits.max_messages:
            raise invalid_param("messages", f"At most {self.settings.limits.max_messages} "
                                "messages are allowed.")
        turns = messages_to_turns(messages)
        self._check_content_size(sum(len(t.content) for t in turns), "messages")
        if preset.system_prompt and not any(t.role == "system" for t in turns):
            turns.insert(0, Turn(role="system", content=preset.system_prompt))
        if instruction:
            turns.append(Turn(role="system", content=instruction))
        if answer_start:
            turns.append(Turn(role="assistant", content=answer_start))
        return self.template.render_chat(turns, condition or preset.condition)

    # -- checks -----------------------------------------------------------------------------

    def _check_n(self, request: SamplingRequest) -> None:
        limit = self.settings.limits.max_n
        if request.n > limit:
            raise invalid_param("n", f"n must be at most {limit}.")

    def _max_tokens(self, prompt_len: int, requested: int | None) -> int:
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

    def _check_content_size(self, chars: int, param: str) -> None:
        limit = self.settings.limits.max_content_chars
        if chars > limit:
            raise APIError(f"The request holds {chars} characters of text; at most {limit} "
                           "are accepted (far more than the model's context).",
                           param=param, code="context_length_exceeded")

    def _constraint(self, request: SamplingRequest) -> Constraint | None:
        constraint = build_constraint(request.response_format, request.structured_outputs)
        if constraint is not None and request.stop:
            raise invalid_param("stop", "stop sequences cannot be combined with structured "
                                "output: they would cut the answer short.")
        if constraint is not None and request.ignore_eos:
            raise invalid_param("ignore_eos", "ignore_eos cannot be combined with "
                                "structured output.")
        return constraint

    def _completion_prompts(self, prompt: PromptInput) -> list[Prompt]:
        if isinstance(prompt, str):
            prompt = [prompt]
        if not prompt:
            raise invalid_param("prompt", "prompt must not be empty.")
        if all(isinstance(p, int) for p in prompt):
            prompt = [prompt]
        self._check_content_size(sum(len(p) for p in prompt if isinstance(p, str)), "prompt")
        tokenizer = self.template.tokenizer
        prompts = []
        for p in prompt:
            if isinstance(p, str):
                prompts.append(Prompt(self.template.render_text(p), p))
                continue
            if not p:
                raise invalid_param("prompt", "a token-id prompt must not be empty.")
            if not all(tokenizer.is_valid_id(t) for t in p):
                raise invalid_param("prompt", "prompt holds token ids outside the vocabulary.")
            prompts.append(Prompt(list(p), tokenizer.decode(p)))
        return prompts
