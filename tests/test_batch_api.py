"""End to end: the Files and Batch APIs through the official `openai` client, on the real
engine: upload, create, poll, read the output and error files; list, cancel; another
key's files and batches are not found; bad uploads are 400s naming the line; a batch
validates before it runs; files expire; batch lines count against the key's tokens."""

from __future__ import annotations

import json
import re
import time
import uuid

import openai
import pytest
from openai.types import Batch, Completion, CreateEmbeddingResponse, FileObject
from openai.types.chat import ChatCompletion
from openai.types.responses import Response

pytestmark = pytest.mark.e2e

MODEL = "openchat-3.5"
ENDED = {"completed", "failed", "expired", "cancelled"}


def chat_line(custom_id: str, content: str = "Hi", **body) -> dict:
    return {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions",
            "body": {"model": MODEL, "messages": [{"role": "user", "content": content}],
                     "max_tokens": 8, **body}}


def jsonl(lines: list[dict]) -> bytes:
    return "".join(json.dumps(line) + "\n" for line in lines).encode()


def upload(client, lines: list[dict]) -> FileObject:
    return client.files.create(file=("requests.jsonl", jsonl(lines)), purpose="batch")


def wait(client, batch_id: str, timeout: float = 180) -> Batch:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        batch = client.batches.retrieve(batch_id)
        if batch.status in ENDED:
            return batch
        time.sleep(0.5)
    raise AssertionError(f"batch {batch_id} still {batch.status} after {timeout}s")


def read_lines(client, file_id: str) -> list[dict]:
    return [json.loads(line) for line in client.files.content(file_id).text.splitlines()]


@pytest.fixture(scope="module")
def other_client(http, base_url):
    """A second key with the same scopes: it must see nothing of the first key's."""
    made = http.post("/v1/admin/keys", json={"name": f"batch-{uuid.uuid4().hex[:6]}",
                                             "scopes": ["inference", "batch"]})
    assert made.status_code == 201, made.text
    return openai.OpenAI(base_url=f"{base_url}/v1", api_key=made.json()["secret"],
                         max_retries=0)


def test_chat_batch_answers_every_line_and_a_bad_one_is_an_error_line(client):
    lines = [chat_line(f"q{n}", f"Question {n}", temperature=0) for n in range(3)]
    lines.append(chat_line("bad", max_tokens=0))  # the live route's own 400
    lines.append(chat_line("streamed", stream=True))
    uploaded = upload(client, lines)
    assert uploaded.id.startswith("file-") and uploaded.object == "file"
    assert uploaded.purpose == "batch" and uploaded.status == "processed"
    assert uploaded.bytes == len(jsonl(lines)) and uploaded.filename == "requests.jsonl"

    created = client.batches.create(input_file_id=uploaded.id,
                                    endpoint="/v1/chat/completions",
                                    completion_window="24h", metadata={"run": "e2e"})
    assert created.id.startswith("batch_") and created.object == "batch"
    assert created.status == "validating" and created.in_progress_at is None
    assert created.metadata == {"run": "e2e"}

    done = wait(client, created.id)
    assert done.status == "completed", done
    assert done.completed_at and done.in_progress_at and done.finalizing_at is not None
    assert (done.request_counts.total, done.request_counts.completed,
            done.request_counts.failed) == (5, 3, 2)

    output = read_lines(client, done.output_file_id)
    assert [line["custom_id"] for line in output] == ["q0", "q1", "q2"]
    assert done.model == MODEL
    assert done.usage.output_tokens == sum(
        line["response"]["body"]["usage"]["completion_tokens"] for line in output)
    assert done.usage.total_tokens == done.usage.input_tokens + done.usage.output_tokens
    for line in output:
        assert line["error"] is None and line["id"].startswith("batch_req_")
        assert line["response"]["status_code"] == 200
        completion = ChatCompletion.model_validate(line["response"]["body"])
        assert completion.model == MODEL and completion.choices[0].message.role == "assistant"
        assert 1 <= completion.usage.completion_tokens <= 8

    errors = {line["custom_id"]: line for line in read_lines(client, done.error_file_id)}
    assert set(errors) == {"bad", "streamed"}
    for custom_id, param in (("bad", "max_tokens"), ("streamed", "stream")):
        response = errors[custom_id]["response"]
        assert response["status_code"] == 400
        assert set(response["body"]["error"]) == {"message", "type", "param", "code"}
        assert response["body"]["error"]["param"] == param
    meta = client.files.retrieve(done.output_file_id)
    assert meta.purpose == "batch_output" and meta.bytes > 0


@pytest.mark.parametrize("endpoint, body, kind", [
    ("/v1/completions", {"model": MODEL, "prompt": "Once", "max_tokens": 4}, Completion),
    ("/v1/embeddings", {"model": "all-minilm-l6-v2", "input": "a cat"},
     CreateEmbeddingResponse),
    ("/v1/responses", {"model": MODEL, "input": "Hi", "max_output_tokens": 4}, Response),
])
def test_other_endpoints_run_through_their_own_route(client, endpoint, body, kind):
    lines = [{"custom_id": f"r{n}", "method": "POST", "url": endpoint, "body": body}
             for n in range(2)]
    batch = client.batches.create(input_file_id=upload(client, lines).id, endpoint=endpoint,
                                  completion_window="24h")
    done = wait(client, batch.id)
    assert done.status == "completed" and done.request_counts.completed == 2, done
    for line in read_lines(client, done.output_file_id):
        kind.model_validate(line["response"]["body"])


def test_a_line_for_another_endpoint_fails_the_batch_in_validation(client):
    uploaded = upload(client, [chat_line("a"), chat_line("b")])
    batch = client.batches.create(input_file_id=uploaded.id, endpoint="/v1/completions",
                                  completion_window="24h")
    assert batch.status == "validating"
    failed = wait(client, batch.id)
    assert failed.status == "failed" and failed.failed_at and failed.in_progress_at is None
    assert [(e.line, e.code, e.param) for e in failed.errors.data] == [
        (1, "invalid_url", "url"), (2, "invalid_url", "url")]
    assert failed.request_counts.total == 0 and failed.output_file_id is None


def test_files_expire_after_what_the_upload_asks(client, http):
    uploaded = client.files.create(file=("e.jsonl", jsonl([chat_line("a")])), purpose="batch",
                                   expires_after={"anchor": "created_at", "seconds": 3600})
    assert uploaded.expires_at == uploaded.created_at + 3600
    assert client.files.retrieve(uploaded.id).expires_at == uploaded.expires_at
    assert upload(client, [chat_line("a")]).expires_at is None  # kept until deleted
    for seconds, param in ((3599, "expires_after[seconds]"), (2_592_001,
                           "expires_after[seconds]")):
        with pytest.raises(openai.BadRequestError) as excinfo:
            client.files.create(file=("e.jsonl", jsonl([chat_line("a")])), purpose="batch",
                                expires_after={"anchor": "created_at", "seconds": seconds})
        assert excinfo.value.body["param"] == param
    response = http.post("/v1/files", files={"file": ("e.jsonl", jsonl([chat_line("a")]))},
                         data={"purpose": "batch", "expires_after[anchor]": "last_used",
                               "expires_after[seconds]": "3600"})
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == "expires_after[anchor]"


def test_output_files_expire_when_the_batch_asks(client):
    batch = client.batches.create(input_file_id=upload(client, [chat_line("o")]).id,
                                  endpoint="/v1/chat/completions", completion_window="24h",
                                  output_expires_after={"anchor": "created_at",
                                                        "seconds": 7200})
    done = wait(client, batch.id)
    output = client.files.retrieve(done.output_file_id)
    assert output.expires_at == output.created_at + 7200


def test_batch_lines_count_against_the_keys_tokens(http, base_url):
    """A key with a small token budget (300 per 3-second window in the tests): its batch of
    ~1,000 tokens shows in the key's token headers (or spends the window: 429), and its
    lines wait for the window instead of failing."""
    made = http.post("/v1/admin/keys", json={"name": f"tpm-{uuid.uuid4().hex[:6]}",
                                             "scopes": ["inference", "batch"], "tpm": 600})
    assert made.status_code == 201, made.text
    headers = {"Authorization": f"Bearer {made.json()['secret']}"}
    limited = openai.OpenAI(base_url=f"{base_url}/v1", api_key=made.json()["secret"],
                            max_retries=5)
    lines = [chat_line(f"t{n}", max_tokens=64, ignore_eos=True) for n in range(12)]
    batch = limited.batches.create(input_file_id=upload(limited, lines).id,
                                   endpoint="/v1/chat/completions", completion_window="24h")
    seen, deadline = [], time.monotonic() + 180
    while time.monotonic() < deadline:
        response = http.get(f"/v1/batches/{batch.id}", headers=headers)
        seen.append((response.status_code,
                     int(response.headers.get("x-ratelimit-remaining-tokens", 600))))
        if response.status_code == 200 and response.json()["status"] in ENDED:
            break
        time.sleep(0.2)
    done = response.json()
    assert done["status"] == "completed", done
    assert done["request_counts"] == {"total": 12, "completed": 12, "failed": 0}
    assert done["usage"]["total_tokens"] > 600
    # A poll alone holds 256 tokens (settled to 0): anything less left is the batch's.
    assert any(status == 429 or left < 600 - 256 for status, left in seen), seen


def test_list_pages_and_cancel(client):
    ids = []
    for _ in range(2):
        uploaded = upload(client, [chat_line(f"c{n}", max_tokens=16) for n in range(12)])
        ids.append(client.batches.create(input_file_id=uploaded.id,
                                         endpoint="/v1/chat/completions",
                                         completion_window="24h").id)
    while client.batches.retrieve(ids[1]).status == "validating":  # then it has its lines
        time.sleep(0.1)
    cancelling = client.batches.cancel(ids[1])
    assert cancelling.status in ("cancelling", "cancelled")
    first = client.batches.list(limit=1)
    assert [b.id for b in first.data] == [ids[1]] and first.has_more
    second = client.batches.list(limit=1, after=ids[1])
    assert [b.id for b in second.data] == [ids[0]]
    cancelled = wait(client, ids[1])
    assert cancelled.status == "cancelled" and cancelled.cancelled_at is not None
    counts = cancelled.request_counts
    assert counts.total == 12 and counts.completed < 12
    never_run = [line for line in read_lines(client, cancelled.error_file_id)
                 if line["response"] is None]
    assert len(never_run) == 12 - counts.completed - counts.failed
    assert {line["error"]["code"] for line in never_run} == {"batch_cancelled"}
    assert wait(client, ids[0]).status == "completed"
    with pytest.raises(openai.ConflictError):
        client.batches.cancel(ids[0])


def test_files_list_retrieve_delete(client):
    uploaded = upload(client, [chat_line("a")])
    assert uploaded.id in [f.id for f in client.files.list(purpose="batch")]
    assert client.files.retrieve(uploaded.id).id == uploaded.id
    assert client.files.delete(uploaded.id).deleted is True
    with pytest.raises(openai.NotFoundError):
        client.files.retrieve(uploaded.id)


def test_another_key_gets_404_on_the_file_and_the_batch(client, other_client):
    uploaded = upload(client, [chat_line("a", max_tokens=1)])
    batch = client.batches.create(input_file_id=uploaded.id,
                                  endpoint="/v1/chat/completions", completion_window="24h")
    for call in (lambda: other_client.files.retrieve(uploaded.id),
                 lambda: other_client.files.content(uploaded.id),
                 lambda: other_client.files.delete(uploaded.id),
                 lambda: other_client.batches.retrieve(batch.id),
                 lambda: other_client.batches.cancel(batch.id),
                 lambda: other_client.batches.create(input_file_id=uploaded.id,
                                                     endpoint="/v1/chat/completions",
                                                     completion_window="24h")):
        with pytest.raises(openai.NotFoundError) as excinfo:
            call()
        assert set(excinfo.value.body) == {"message", "type", "param", "code"}
    assert batch.id not in [b.id for b in other_client.batches.list()]
    assert uploaded.id not in [f.id for f in other_client.files.list()]
    assert wait(client, batch.id).status == "completed"  # still its owner's


def test_a_key_without_the_batch_scope_is_refused(http, base_url):
    made = http.post("/v1/admin/keys", json={"name": f"nobatch-{uuid.uuid4().hex[:6]}",
                                             "scopes": ["inference"]})
    narrow = openai.OpenAI(base_url=f"{base_url}/v1", api_key=made.json()["secret"],
                           max_retries=0)
    with pytest.raises(openai.PermissionDeniedError):
        narrow.files.list()


@pytest.mark.parametrize("content, code, message", [
    (b"this is not json\n", "invalid_json_line", "Line 1:"),
    (jsonl([chat_line("a"), chat_line("a")]), "duplicate_custom_id", "Line 2:"),
    (jsonl([chat_line("a"), {**chat_line("b"), "url": "/v1/images/generations"}]),
     "invalid_url", "Line 2:"),
    (b"", "empty_file", "no requests"),
])
def test_bad_uploads_are_400_naming_the_line(client, content, code, message):
    with pytest.raises(openai.BadRequestError) as excinfo:
        client.files.create(file=("bad.jsonl", content), purpose="batch")
    error = excinfo.value.body
    assert error["code"] == code and message in error["message"] and error["param"] == "file"


@pytest.mark.parametrize("changes, param", [
    ({"purpose": "fine-tune"}, "purpose"),
])
def test_only_batch_files_are_accepted(client, changes, param):
    with pytest.raises(openai.BadRequestError) as excinfo:
        client.files.create(file=("a.jsonl", jsonl([chat_line("a")])), **changes)
    assert excinfo.value.body["param"] == param


@pytest.mark.parametrize("body, param", [
    ({"endpoint": "/v1/chat/completions", "completion_window": "1h"}, "completion_window"),
    ({"endpoint": "/v1/images", "completion_window": "24h"}, "endpoint"),
])
def test_bad_batch_requests_are_400(http, client, body, param):
    uploaded = upload(client, [chat_line("a")])
    response = http.post("/v1/batches", json={"input_file_id": uploaded.id, **body})
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param


def test_oversized_upload_is_413(http):
    big = b"x" * (4 * 1024 * 1024 + 1)  # the tests' batch.max_file_bytes + 1
    response = http.post("/v1/files", files={"file": ("big.jsonl", big)},
                         data={"purpose": "batch"})
    assert response.status_code == 413, response.text
    assert response.json()["error"]["code"] == "file_too_large"
    assert response.json()["error"]["param"] == "file"


def test_a_multi_mib_file_streams_up_and_back_byte_identical(client, http):
    """3 MiB of requests (non-ASCII text, so characters straddle the 1 MiB chunks) are
    kept and read back as sent, with their length declared."""
    data, n = b"", 0
    while len(data) < 3 * 1024 * 1024:
        line = chat_line(f"big{n}", "Größe 漢字 " * 20)
        data += json.dumps(line, ensure_ascii=False).encode() + b"\n"
        n += 1
    uploaded = client.files.create(file=("big.jsonl", data), purpose="batch")
    assert uploaded.bytes == len(data)
    assert client.files.content(uploaded.id).read() == data
    response = http.get(f"/v1/files/{uploaded.id}/content")
    assert response.headers["content-length"] == str(len(data))
    assert response.headers["content-type"] == "application/octet-stream"
    client.files.delete(uploaded.id)
    missing = http.get(f"/v1/files/{uploaded.id}/content")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"


def test_batch_lines_are_counted_in_metrics(client, http):
    batch = client.batches.create(input_file_id=upload(client, [chat_line("m")]).id,
                                  endpoint="/v1/chat/completions", completion_window="24h")
    wait(client, batch.id)
    text = http.get("/metrics").text
    assert 'openchat_batch_lines_total{outcome="completed"}' in text


def test_batch_lines_wait_while_an_interactive_request_runs(client, base_url):
    """batch.yield_to_interactive: no line is claimed while an interactive answer is in
    flight on the worker; once it ends, the batch runs."""
    import httpx

    from tests.conftest import AUTH

    body = {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}],
            "max_tokens": 8000, "ignore_eos": True, "stream": True}
    with httpx.stream("POST", f"{base_url}/v1/chat/completions", json=body, headers=AUTH,
                      timeout=120) as stream:
        lines = stream.iter_lines()
        assert next(line for line in lines if line).startswith("data: ")
        batch = client.batches.create(input_file_id=upload(client, [chat_line("q")]).id,
                                      endpoint="/v1/chat/completions",
                                      completion_window="24h")
        deadline = time.monotonic() + 4  # several of the runner's polls (0.2 s in tests)
        while time.monotonic() < deadline:
            counts = client.batches.retrieve(batch.id).request_counts
            assert counts.completed == counts.failed == 0, counts
            assert next(line for line in lines if line).startswith("data: ")  # still running
            time.sleep(0.3)
    # The client hung up: the interactive request ends and the batch runs.
    done = wait(client, batch.id, timeout=60)
    assert done.status == "completed" and done.request_counts.completed == 1, done


def test_an_interactive_request_preempts_a_running_line_which_still_completes(client, http):
    """batch.preempt_for_interactive: a line running when an interactive request reaches
    the engine is aborted and handed back; it starts over later, and its batch completes
    with the line answered once."""
    long_line = {"custom_id": "long", "method": "POST", "url": "/v1/chat/completions",
                 "body": {"model": MODEL, "max_tokens": 400, "ignore_eos": True,
                          "messages": [{"role": "user", "content": "Write a long story."}]}}
    batch = client.batches.create(input_file_id=upload(client, [long_line]).id,
                                  endpoint="/v1/chat/completions", completion_window="24h")
    ask = {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}

    def preemptions() -> float:
        found = re.search(r"^openchat_batch_preemptions_total (\S+)$",
                          http.get("/metrics").text, re.M)
        return float(found.group(1)) if found else 0.0

    before = preemptions()
    deadline = time.monotonic() + 30
    while preemptions() == before:  # until an interactive request met the line running
        assert time.monotonic() < deadline, "no line was preempted"
        assert http.post("/v1/chat/completions", json=ask).status_code == 200
        time.sleep(0.3)
    done = wait(client, batch.id, timeout=120)
    assert done.status == "completed" and done.request_counts.completed == 1, done
    (line,) = [json.loads(x) for x in client.files.content(done.output_file_id).text.splitlines()]
    assert line["custom_id"] == "long"
    assert line["response"]["body"]["usage"]["completion_tokens"] == 400
