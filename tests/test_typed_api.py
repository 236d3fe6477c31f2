"""End-to-end: the typed BentoML APIs through BentoML's own client."""

from __future__ import annotations

import bentoml
import pytest

from tests.conftest import ADMIN_KEY

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def bento(base_url):
    with bentoml.SyncHTTPClient(base_url, timeout=120, token=ADMIN_KEY) as client:
        yield client


def test_chat_returns_typed_result(bento):
    result = bento.chat(messages=[{"role": "user", "content": "Hi"}], max_tokens=5, seed=1)
    assert set(result) >= {"text", "finish_reason", "model", "usage"}
    assert result["usage"]["prompt_tokens"] == 17
    assert result["usage"]["completion_tokens"] <= 5
    assert result["model"] == "openchat-3.5"


def test_generate_streams_text(bento):
    pieces = list(bento.generate(prompt="Once upon a time", max_tokens=8, seed=3))
    assert pieces and all(isinstance(p, str) for p in pieces)


def test_chat_unknown_model_is_client_error(bento):
    with pytest.raises(bentoml.exceptions.BentoMLException) as excinfo:
        bento.chat(messages=[{"role": "user", "content": "Hi"}], model="nope")
    assert "nope" in str(excinfo.value)


def test_chat_bad_option_is_client_error(bento):
    with pytest.raises(bentoml.exceptions.BentoMLException) as excinfo:
        bento.chat(messages=[{"role": "user", "content": "Hi"}], stop=["a", "b", "c", "d", "e"])
    assert excinfo.value.error_code == 400


@pytest.mark.parametrize(("body", "headers", "status"), [
    (b'{"messages": [{"role": "user", "content": "Hi"}], "model": "nope"}',
     {"Content-Type": "application/json"}, 404),
    (b'{"messages": "not a list"}', {"Content-Type": "application/json"}, 400),
    (b"--x\r\n", {"Content-Type": "multipart/form-data"}, 400),  # no boundary
])
def test_typed_api_errors_are_in_openai_shape(http, body, headers, status):
    response = http.post("/chat", content=body, headers=headers)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
