"""End-to-end: /tokenize and /detokenize give OpenChat's exact token ids."""

from __future__ import annotations

import pytest

from tests.conftest import REFERENCE_HI_IDS

pytestmark = pytest.mark.e2e


def test_tokenize_chat_equals_reference_ids(http):
    response = http.post("/tokenize", json={"messages": [{"role": "user", "content": "Hi"}]})
    assert response.status_code == 200
    assert response.json()["tokens"] == REFERENCE_HI_IDS
    assert response.json()["count"] == len(REFERENCE_HI_IDS)


def test_tokenize_prompt_and_detokenize_round_trip(http):
    tokens = http.post("/tokenize", json={"prompt": "Hello world"}).json()["tokens"]
    assert tokens[0] == 1
    text = http.post("/detokenize", json={"tokens": tokens[1:]}).json()["prompt"]
    assert text == "Hello world"
    marked = http.post("/detokenize", json={"tokens": [15359, 32000]}).json()["prompt"]
    assert marked == "Hi<|end_of_turn|>"


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/tokenize", {}),
        ("/tokenize", {"prompt": "a", "messages": [{"role": "user", "content": "b"}]}),
        ("/tokenize", {"prompt": "a", "model": "nope"}),
        ("/detokenize", {"tokens": [-1]}),
        ("/detokenize", {"tokens": "abc"}),
    ],
)
def test_bad_token_requests(http, path, body):
    response = http.post(path, json=body)
    assert response.status_code in (400, 404)
    assert set(response.json()["error"]) == {"message", "type", "param", "code"}


@pytest.mark.parametrize(("path", "body", "param"), [
    ("/detokenize", {"tokens": [True]}, "tokens[0]"),
    ("/tokenize", {"prompt": "a", "add_special_tokens": 0}, "add_special_tokens"),
    ("/v1/completions", {"model": "openchat-3.5", "prompt": "a", "echo": 1}, "echo"),
    ("/v1/completions", {"model": "openchat-3.5", "prompt": "a", "max_tokens": "5"},
     "max_tokens"),
])
def test_wrong_json_types_are_400_invalid_type(http, path, body, param):
    response = http.post(path, json=body)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert (error["code"], error["param"]) == ("invalid_type", param), error


def test_a_missing_body_says_so(http):
    response = http.post("/tokenize")
    assert response.status_code == 400
    error = response.json()["error"]
    assert "body is missing" in error["message"] and "None" not in error["message"]
