"""A batch input file's lines, checked at upload and again when its batch validates:
every error names its line; a batch's validation errors are OpenAI's `errors`."""

from __future__ import annotations

import json

import pytest

from pydantic import ValidationError

from openchat.protocol.batches import (
    ExpiresAfter,
    batch_usage,
    body_model,
    check_batch_file,
    line_tokens,
    output_line,
    oversized_line,
    parse_batch_file,
)
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


def test_validation_gives_the_lines_or_the_batchs_errors():
    lines, errors = check_batch_file(jsonl(request("a"), request("b")),
                                     "/v1/chat/completions", 10)
    assert errors is None and [line.custom_id for line in lines] == ["a", "b"]
    lines, errors = check_batch_file(jsonl(request("a"), request("b", "/v1/completions"),
                                           request("c", "/v1/embeddings")),
                                     "/v1/chat/completions", 10)
    assert lines == [] and errors["object"] == "list"
    assert [(e["line"], e["code"], e["param"]) for e in errors["data"]] == [
        (2, "invalid_url", "url"), (3, "invalid_url", "url")]
    assert "is not the batch's endpoint" in errors["data"][0]["message"]


@pytest.mark.parametrize("content, code, line", [
    (b"", "empty_file", None),
    (jsonl(request("a"), request("a")), "duplicate_custom_id", 2),
    (b"nope", "invalid_json_line", 1),
    (jsonl(request("a"), request("b"), request("c")), "too_many_requests", None),
])
def test_a_file_that_cannot_run_fails_validation_whole(content, code, line):
    lines, errors = check_batch_file(content, "/v1/chat/completions", 2)
    assert lines == [] and [(e["code"], e["line"]) for e in errors["data"]] == [(code, line)]
    assert set(errors["data"][0]) == {"code", "message", "param", "line"}


def test_an_oversized_body_is_the_live_routes_413_body():
    assert oversized_line("x" * 10, 10) is None
    error = oversized_line("x" * 11, 10)["error"]
    assert error["code"] == "request_too_large" and "10 bytes" in error["message"]
    assert error["type"] == "invalid_request_error"


def test_line_tokens_are_the_usage_total_of_any_endpoint():
    assert line_tokens({"usage": {"prompt_tokens": 5, "completion_tokens": 3,
                                  "total_tokens": 8}}) == 8
    assert line_tokens({"usage": {"input_tokens": 4, "output_tokens": 2}}) == 6
    assert line_tokens({"usage": {"prompt_tokens": 7, "total_tokens": 7}}) == 7  # embeddings
    assert line_tokens({}) == 0


@pytest.mark.parametrize("seconds, ok", [(3599, False), (3600, True), (2_592_000, True),
                                         (2_592_001, False), ("3600", False)])
def test_expires_after_is_one_hour_to_thirty_days(seconds, ok):
    data = {"anchor": "created_at", "seconds": seconds}
    if ok:
        assert ExpiresAfter.model_validate(data).seconds == seconds
    else:
        with pytest.raises(ValidationError):
            ExpiresAfter.model_validate(data)
    with pytest.raises(ValidationError):
        ExpiresAfter.model_validate({"anchor": "last_active_at", "seconds": 3600})
