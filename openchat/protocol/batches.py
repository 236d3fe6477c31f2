"""The Batch API's wire types: the create and list requests, the batch input file's line
format (checked at upload, each error naming its line), and the output line format.

A batch input file is JSONL, one request per line, as OpenAI defines it:
`{"custom_id": "...", "method": "POST", "url": "/v1/chat/completions", "body": {...}}`.
The body is not checked here: each line's body goes through the live route's own request
model when it runs, and a bad one becomes an error line of the batch, not a failed upload.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import Field

from openchat.protocol.errors import APIError, error_body
from openchat.protocol.requests import StrictModel

BATCH_ENDPOINTS = ("/v1/chat/completions", "/v1/completions", "/v1/embeddings",
                   "/v1/responses")
MAX_CUSTOM_ID_CHARS = 512
MAX_METADATA_PAIRS = 16
MIN_EXPIRY_S, MAX_EXPIRY_S = 3600, 2_592_000  # a file's expires_after: 1 hour to 30 days


class ExpiresAfter(StrictModel):
    """OpenAI's file expiry policy: `seconds` after the file's creation, 1 hour to 30 days.
    On `POST /v1/files` it comes as the form fields `expires_after[anchor]` and
    `expires_after[seconds]` (how the `openai` client encodes it)."""

    anchor: Literal["created_at"]
    seconds: int = Field(ge=MIN_EXPIRY_S, le=MAX_EXPIRY_S)


class BatchCreateRequest(StrictModel):
    input_file_id: str = Field(max_length=128)
    endpoint: Literal["/v1/chat/completions", "/v1/completions", "/v1/embeddings",
                      "/v1/responses"]
    completion_window: Literal["24h"]
    metadata: dict[str, str] | None = Field(None, max_length=MAX_METADATA_PAIRS)
    output_expires_after: ExpiresAfter | None = Field(None, description="When the batch's "
                                                      "output and error files expire.")


class BatchListQuery(StrictModel):
    """`GET /v1/batches`: newest first, `after` a batch id of the previous page."""

    after: str | None = None
    limit: int = Field(20, ge=1, le=100)


class FileListQuery(StrictModel):
    """`GET /v1/files`: `after` a file id of the previous page, in `order` by creation."""

    after: str | None = None
    limit: int = Field(10_000, ge=1, le=10_000)
    order: Literal["asc", "desc"] = "desc"
    purpose: str | None = None


@dataclass(frozen=True)
class BatchInputLine:
    """One request of a batch file, as uploaded; `number` counts the file's lines from 1."""

    number: int
    custom_id: str
    url: str
    body: str  # the body, as compact JSON: parsed by the endpoint's request model when run


class BadLine(APIError):
    """A line of a batch file that makes the whole file unusable; `line` counts from 1."""

    def __init__(self, number: int, message: str, code: str) -> None:
        super().__init__(f"Line {number}: {message}", param="file", code=code)
        self.line = number


def bad_line(number: int, message: str, code: str) -> APIError:
    return BadLine(number, message, code)


def read_batch_lines(pieces: Iterable[bytes], max_lines: int) -> Iterator[BatchInputLine]:
    """The requests of a batch input file as they are read, or a 400 naming the first bad
    line. `pieces`: the file's bytes cut only after a newline (a binary file's lines), so
    a line or a UTF-8 character is never split. Nothing but the custom_ids is kept.
    Blank lines are skipped (a trailing newline is common).

    A file that is not UTF-8 is refused as such even if an earlier line is bad: after the
    first bad line the rest is only decoded, as a whole-file check would have."""
    problem: APIError | None = None
    seen: set[str] = set()
    number = 0
    for piece in pieces:
        try:
            text = piece.decode("utf-8")
        except UnicodeDecodeError:
            raise APIError("The file is not UTF-8 text; a batch file is JSONL.",
                           param="file", code="invalid_file_format") from None
        if problem is not None:
            continue
        for raw in text.splitlines():  # the line breaks str.splitlines knows, as before
            number += 1
            if not raw.strip():
                continue
            try:
                line = _parse_line(number, raw)
                if line.custom_id in seen:
                    raise bad_line(number, f"custom_id {line.custom_id!r} is not unique in "
                                   "the file.", "duplicate_custom_id")
                if len(seen) >= max_lines:
                    raise APIError(f"The file has more than {max_lines} requests; split it.",
                                   param="file", code="too_many_requests")
            except APIError as error:
                problem = error
                break
            seen.add(line.custom_id)
            yield line
    if problem is not None:
        raise problem
    if not seen:
        raise APIError("The file has no requests; a batch file has one JSON request per "
                       "line.", param="file", code="empty_file")


def parse_batch_file(data: bytes, max_lines: int) -> list[BatchInputLine]:
    """The requests of a whole batch input file in memory (see read_batch_lines)."""
    return list(read_batch_lines([data], max_lines))


def _parse_line(number: int, raw: str) -> BatchInputLine:
    try:
        item = json.loads(raw)
    except ValueError:
        raise bad_line(number, "not valid JSON; a batch file is JSONL, one JSON object "
                       "per line.", "invalid_json_line") from None
    if not isinstance(item, dict):
        raise bad_line(number, "a request must be a JSON object.", "invalid_json_line")
    extra = sorted(set(item) - {"custom_id", "method", "url", "body"})
    if extra:
        raise bad_line(number, f"unknown field {extra[0]!r}; a request has custom_id, "
                       "method, url and body.", "invalid_request_line")
    custom_id = item.get("custom_id")
    if not isinstance(custom_id, str) or not custom_id:
        raise bad_line(number, "custom_id must be a non-empty string.", "missing_custom_id")
    if len(custom_id) > MAX_CUSTOM_ID_CHARS:
        raise bad_line(number, f"custom_id is longer than {MAX_CUSTOM_ID_CHARS} characters.",
                       "invalid_custom_id")
    if item.get("method") != "POST":
        raise bad_line(number, "method must be 'POST'.", "invalid_method")
    url = item.get("url")
    if url not in BATCH_ENDPOINTS:
        raise bad_line(number, f"url {url!r} is not a batch endpoint; use one of "
                       f"{', '.join(BATCH_ENDPOINTS)}.", "invalid_url")
    body = item.get("body")
    if not isinstance(body, dict):
        raise bad_line(number, "body must be a JSON object (the endpoint's request).",
                       "invalid_body")
    return BatchInputLine(number, custom_id, url, json.dumps(body, separators=(",", ":")))


def batch_errors(problems: list[APIError]) -> dict[str, Any]:
    """OpenAI's `errors` of a batch that failed validation: a list of
    {code, message, param, line} (at most 100)."""
    return {"object": "list", "data": [
        {"code": problem.code, "message": problem.message, "param": problem.param,
         "line": problem.line if isinstance(problem, BadLine) else None}
        for problem in problems[:100]]}


def check_batch_file(source: bytes | Iterable[bytes], endpoint: str, max_lines: int,
                     ) -> tuple[list[BatchInputLine], dict[str, Any] | None]:
    """A batch's validation: its input file's requests, or None and the batch's `errors`
    when the file as a whole cannot run (not JSONL, a bad or duplicate line, empty, too
    long, or lines for another endpoint than the batch's: every such line is named).
    `source`: the file's bytes, or its lines as read_batch_lines takes them."""
    pieces = [source] if isinstance(source, bytes) else source
    try:
        lines = list(read_batch_lines(pieces, max_lines))
    except APIError as problem:
        return [], batch_errors([problem])
    wrong = [BadLine(line.number, f"the line's url {line.url!r} is not the batch's "
                     f"endpoint {endpoint!r}.", "invalid_url")
             for line in lines if line.url != endpoint]
    for problem in wrong:
        problem.param = "url"
    return (lines, None) if not wrong else ([], batch_errors(list(wrong)))


def oversized_line(body: str, max_body_bytes: int) -> dict[str, Any] | None:
    """The error body of a line whose body the live route would refuse as too large
    (status 413), or None if it fits."""
    if len(body.encode()) <= max_body_bytes:
        return None
    return error_body(f"The request body is larger than {max_body_bytes} bytes.",
                      "invalid_request_error", None, "request_too_large")


def line_tokens(body: dict[str, Any]) -> int:
    """The tokens an answered line used (its usage's total), as a live call is charged."""
    return batch_usage([{"response": {"body": body}}])["total_tokens"]


def output_line(line_id: str, custom_id: str, status: int, request_id: str,
                body: dict[str, Any]) -> dict[str, Any]:
    """One line of a batch's output or error file, in OpenAI's format."""
    return {"id": line_id, "custom_id": custom_id,
            "response": {"status_code": status, "request_id": request_id, "body": body},
            "error": None}


def body_model(body: str) -> str | None:
    """The `model` a line's body names (the batch's `model` is its first line's)."""
    try:
        model = json.loads(body).get("model")
    except (ValueError, AttributeError):
        return None
    return model if isinstance(model, str) else None


def batch_usage(results: list[dict[str, Any]]) -> dict[str, Any]:
    """OpenAI's batch `usage`: the tokens of every answered line, whatever its endpoint
    (chat and completions count prompt/completion tokens, responses input/output)."""
    prompt = cached = completion = 0
    for result in results:
        body = result.get("response", {}).get("body") or {}
        usage = body.get("usage") or {}
        prompt += usage.get("prompt_tokens", usage.get("input_tokens", 0)) or 0
        completion += usage.get("completion_tokens", usage.get("output_tokens", 0)) or 0
        details = usage.get("prompt_tokens_details") or usage.get("input_tokens_details") or {}
        cached += details.get("cached_tokens", 0) or 0
    return {"input_tokens": prompt, "input_tokens_details": {"cached_tokens": cached},
            "output_tokens": completion, "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": prompt + completion}
