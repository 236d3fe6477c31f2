"""End-to-end: legacy /v1/completions with strings, lists and token ids."""

from __future__ import annotations

import openai
import pytest

from tests.conftest import REFERENCE_HI_IDS

pytestmark = pytest.mark.e2e
MODEL = "openchat-3.5"


def test_string_prompt(client, http):
    completion = client.completions.create(model=MODEL, prompt="Once upon a time", max_tokens=5)
    assert completion.object == "text_completion"
    assert completion.id.startswith("cmpl-")
    count = http.post("/tokenize", json={"prompt": "Once upon a time"}).json()["count"]
    assert completion.usage.prompt_tokens == count
    assert completion.choices[0].finish_reason in ("stop", "length")


def test_list_of_strings_and_n_index_choices_per_prompt(client):
    completion = client.completions.create(
        model=MODEL, prompt=["a", "b"], n=2, max_tokens=3, temperature=1.0, seed=2
    )
    assert sorted(c.index for c in completion.choices) == [0, 1, 2, 3]


def test_token_id_prompts(client):
    single = client.completions.create(model=MODEL, prompt=REFERENCE_HI_IDS, max_tokens=2)
    assert single.usage.prompt_tokens == len(REFERENCE_HI_IDS)
    many = client.completions.create(
        model=MODEL, prompt=[REFERENCE_HI_IDS, REFERENCE_HI_IDS[:5]], max_tokens=2
    )
    assert many.usage.prompt_tokens == len(REFERENCE_HI_IDS) + 5
    assert len(many.choices) == 2


def test_chat_prompt_ids_through_completions_equal_chat(client):
    """The chat template and raw ids of the same prompt give the same greedy text."""
    chat = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Hi"}], max_tokens=8, temperature=0
    )
    raw = client.completions.create(
        model=MODEL, prompt=REFERENCE_HI_IDS, max_tokens=8, temperature=0
    )
    assert raw.choices[0].text == chat.choices[0].message.content


def test_stream_with_usage_and_echo(client):
    text = ""
    usage = None
    for chunk in client.completions.create(
        model=MODEL, prompt="Hello", max_tokens=4, echo=True, stream=True,
        stream_options={"include_usage": True}, extra_body={"ignore_eos": True},
    ):
        for choice in chunk.choices:
            text += choice.text
        usage = chunk.usage or usage
    assert text.startswith("Hello") and len(text) > len("Hello")
    assert usage.completion_tokens == 4


def test_logprobs(client):
    completion = client.completions.create(
        model=MODEL, prompt="Hello", max_tokens=3, logprobs=2, extra_body={"ignore_eos": True}
    )
    logprobs = completion.choices[0].logprobs
    assert len(logprobs.tokens) == len(logprobs.token_logprobs) == 3
    assert all(len(top) == 2 for top in logprobs.top_logprobs)
    assert "".join(logprobs.tokens) == completion.choices[0].text


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"prompt": []}, "prompt"),
        ({"prompt": [[]]}, "prompt"),
        ({"prompt": [99999]}, "prompt"),
        ({"prompt": "x", "suffix": "y"}, None),
        ({"prompt": "x", "max_tokens": 9000}, "max_tokens"),
        ({"prompt": "x", "logprobs": 9}, "logprobs"),
    ],
)
def test_bad_completion_requests_are_400(http, body, param):
    response = http.post("/v1/completions", json={"model": MODEL, **body})
    assert response.status_code == 400, response.text
    if param:
        assert response.json()["error"]["param"] == param


def test_unknown_model(client):
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="davinci", prompt="x")
