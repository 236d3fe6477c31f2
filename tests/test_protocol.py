"""Unit tests: request validation and conversion to vLLM sampling parameters."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from openchat.config import SamplingDefaults
from openchat.protocol.requests import ChatCompletionRequest, CompletionRequest, TokenizeRequest

HI = [{"role": "user", "content": "Hi"}]


def test_preset_defaults_fill_only_unset_values():
    request = ChatCompletionRequest(model="m", messages=HI, temperature=0.3)
    params = request.to_sampling_params(
        max_tokens=10, defaults=SamplingDefaults(temperature=0.9, top_p=0.5)
    )
    assert params.temperature == 0.3
    assert params.top_p == 0.5
    assert params.max_tokens == 10
    assert params.stop_token_ids == [32000]


def test_a_request_with_its_own_tail_filter_gets_none_of_the_presets():
    preset = SamplingDefaults(temperature=0.7, min_p=0.05)
    own = ChatCompletionRequest(model="m", messages=HI, top_p=0.9).to_sampling_params(
        max_tokens=10, defaults=preset)
    assert (own.top_p, own.min_p, own.temperature) == (0.9, 0.0, 0.7)
    plain = ChatCompletionRequest(model="m", messages=HI).to_sampling_params(
        max_tokens=10, defaults=preset)
    assert (plain.top_p, plain.min_p) == (1.0, 0.05)


def test_ignore_eos_drops_end_of_turn_stop():
    request = ChatCompletionRequest(model="m", messages=HI, ignore_eos=True)
    params = request.to_sampling_params(max_tokens=5, defaults=SamplingDefaults())
    assert params.ignore_eos and not params.stop_token_ids


def test_stop_string_becomes_list_and_logit_bias_ints():
    request = ChatCompletionRequest(model="m", messages=HI, stop="\n", logit_bias={"42": 5})
    params = request.to_sampling_params(max_tokens=5, defaults=SamplingDefaults())
    assert params.stop == ["\n"]
    assert params.logit_bias == {42: 5}


def test_max_completion_tokens_wins_over_max_tokens():
    request = ChatCompletionRequest(model="m", messages=HI, max_tokens=5,
                                    max_completion_tokens=7)
    assert request.requested_max_tokens() == 7


def test_logprobs_count():
    assert ChatCompletionRequest(model="m", messages=HI).logprobs_count() is None
    assert ChatCompletionRequest(model="m", messages=HI, logprobs=True).logprobs_count() == 0
    request = ChatCompletionRequest(model="m", messages=HI, logprobs=True, top_logprobs=4)
    assert request.logprobs_count() == 4


@pytest.mark.parametrize(
    "fields",
    [
        {"top_logprobs": 2},
        {"stream_options": {"include_usage": True}},
        {"stop": ["a"] * 5},
        {"stop": [""]},
        {"logit_bias": {"x": 1}},
        {"unknown": 1},
        {"seed": 2**70},
    ],
)
def test_invalid_chat_requests(fields):
    with pytest.raises(ValidationError):
        ChatCompletionRequest(model="m", messages=HI, **fields)


@pytest.mark.parametrize(
    "fields", [{"suffix": "x"}, {"best_of": 3}, {"echo": True, "logprobs": 1}]
)
def test_unsupported_legacy_options(fields):
    with pytest.raises(ValidationError):
        CompletionRequest(model="m", prompt="x", **fields)


def test_completion_prompt_forms():
    for prompt in ("a", ["a", "b"], [1, 2], [[1, 2], [3]]):
        assert CompletionRequest(model="m", prompt=prompt).prompt == prompt


def test_tokenize_needs_exactly_one_input():
    with pytest.raises(ValidationError):
        TokenizeRequest()
    with pytest.raises(ValidationError):
        TokenizeRequest(prompt="a", messages=HI)


def test_json_depth_counts_levels_without_recursion():
    from openchat.protocol.requests import MAX_JSON_DEPTH, json_depth

    assert json_depth({"a": 1}) == 1
    assert json_depth({"a": [{"b": []}]}) == 4
    deep: list = []
    for _ in range(100_000):  # far past Python's recursion limit
        deep = [deep]
    assert json_depth(deep) == MAX_JSON_DEPTH + 1  # stops counting once over the limit
