"""A batch input file's lines, checked at upload: every error names its line."""

from __future__ import annotations

import json

import pytest

from openchat.protocol.batches import batch_usage, body_model, output_line, parse_batch_file
from openchat.protocol.errors import APIError


def request(custom_id: str = "a", url: str = "/v1/chat/completions", **changes) -> dict:
    return {"custom_id": custom_id, "method": "POST", "url": url,
            "body": {"model": "openchat-3.5", "messages": [{"role": "user", "content": "Hi"}]},
            **changes}


def jsonl(*items) -> bytes:
    return "\n".join(i if isinstance(i, str) else json.dumps(i) for i in items).encode()


def test_good_file_parses_in_order_skipping_blank_lines():
    lines = parse_batch_file(jsonl(request("a"), "", request("b", "/v1/embeddings"), ""), 10)
    assert [(line.number, line.custom_id, line.url) for line in lines] == [
        (1, "a", "/v1/chat/completions"), (3, "b", "/v1/embeddings")]
    assert json.loads(lines[0].body)["model"] == "openchat-3.5"


@pytest.mark.parametrize("content, line, code", [
    (jsonl(request("a"), "{not json"), 2, "invalid_json_line"),
    (jsonl(request("a"), "[1, 2]"), 2, "invalid_json_line"),
    (jsonl(request("a"), request("a")), 2, "duplicate_custom_id"),
    (jsonl(request("a", "/v1/images/generations")), 1, "invalid_url"),
    (jsonl(request("a", method="GET")), 1, "invalid_method"),
    (jsonl(request("a", body="Hi")), 1, "invalid_body"),
    (jsonl(request("")), 1, "missing_custom_id"),
    (jsonl(request(7)), 1, "missing_custom_id"),
    (jsonl(request("a", extra=1)), 1, "invalid_request_line"),
])
def test_a_bad_line_is_a_400_naming_it(content, line, code):
    with pytest.raises(APIError) as excinfo:
        parse_batch_file(content, 10)
    error = excinfo.value
    assert error.status == 400 and error.code == code and error.param == "file"
    assert error.message.startswith(f"Line {line}: ")


@pytest.mark.parametrize("content, code", [
    (b"", "empty_file"),
    (b"\n\n", "empty_file"),
    (b"\xff\xfe", "invalid_file_format"),
    (jsonl(*(request(str(n)) for n in range(4))), "too_many_requests"),
])
def test_a_bad_file_is_a_400(content, code):
    with pytest.raises(APIError) as excinfo:
        parse_batch_file(content, 3)
    assert excinfo.value.status == 400 and excinfo.value.code == code


def test_output_line_has_openais_shape():
    assert output_line("batch_req_1", "a", 200, "req_1", {"id": "x"}) == {
        "id": "batch_req_1", "custom_id": "a",
        "response": {"status_code": 200, "request_id": "req_1", "body": {"id": "x"}},
        "error": None}


def test_batch_usage_sums_every_endpoints_usage():
    chat = {"usage": {"prompt_tokens": 17, "completion_tokens": 8, "total_tokens": 25,
                      "prompt_tokens_details": {"cached_tokens": 16}}}
    response = {"usage": {"input_tokens": 10, "output_tokens": 2, "total_tokens": 12,
                          "input_tokens_details": {"cached_tokens": 0}}}
    embedding = {"usage": {"prompt_tokens": 3, "total_tokens": 3}}
    lines = [output_line("b", "c", 200, "r", body) for body in (chat, response, embedding)]
    assert batch_usage(lines) == {"input_tokens": 30, "input_tokens_details": {
        "cached_tokens": 16}, "output_tokens": 10, "output_tokens_details": {
        "reasoning_tokens": 0}, "total_tokens": 40}


def test_body_model_is_the_bodys_model_if_any():
    assert body_model('{"model": "openchat-3.5"}') == "openchat-3.5"
    assert body_model('{"model": 5}') is None and body_model("[]") is None
