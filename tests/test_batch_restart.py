"""End to end: a service stopped in the middle of a batch, and a new one on the same
batch store and files directory, finish it: every line is answered exactly once and the
lines finished before the stop are not run again."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import time

import openai
import pytest

from tests.conftest import ADMIN_KEY, RunningService, service_env

pytestmark = pytest.mark.e2e

LINES = 40


def wait_for(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.3)


def test_a_restart_resumes_only_the_unfinished_lines(tmp_path):
    database = tmp_path / "batches.db"
    env = service_env(OPENCHAT_BATCH__STORE_URL=f"sqlite:///{database}",
                      OPENCHAT_BATCH__FILES_DIR=str(tmp_path / "files"),
                      OPENCHAT_AUTH__KEYS_URL=f"sqlite:///{tmp_path / 'keys.db'}")
    lines = [{"custom_id": f"r{n}", "method": "POST", "url": "/v1/chat/completions",
              "body": {"model": "openchat-3.5", "max_tokens": 16, "ignore_eos": True,
                       "messages": [{"role": "user", "content": f"Line {n}"}]}}
             for n in range(LINES)]
    data = "".join(json.dumps(line) + "\n" for line in lines).encode()

    first = RunningService(env, tmp_path / "first.log")
    try:
        first.wait_ready()
        client = openai.OpenAI(base_url=f"{first.url}/v1", api_key=ADMIN_KEY, max_retries=0)
        uploaded = client.files.create(file=("lines.jsonl", data), purpose="batch")
        batch = client.batches.create(input_file_id=uploaded.id,
                                      endpoint="/v1/chat/completions",
                                      completion_window="24h")
        wait_for(lambda: client.batches.retrieve(batch.id).request_counts.completed >= 4,
                 120, "the first lines")
        os.kill(first.process.pid, signal.SIGTERM)  # as a supervisor stops it
        assert first.process.wait(timeout=90) == 0, first.log()[-3000:]
    finally:
        first.stop()

    with sqlite3.connect(database) as db:
        before = dict(db.execute("SELECT custom_id, result FROM batch_lines "
                                 "WHERE state = 'done'").fetchall())
        states = {state for (state,) in db.execute("SELECT state FROM batch_lines")}
    assert 4 <= len(before) < LINES, "stop the first service in the middle of the batch"
    assert "running" not in states  # a clean stop hands its lines back

    second = RunningService(env, tmp_path / "second.log")
    try:
        second.wait_ready()
        client = openai.OpenAI(base_url=f"{second.url}/v1", api_key=ADMIN_KEY,
                               max_retries=0)
        wait_for(lambda: client.batches.retrieve(batch.id).status == "completed", 300,
                 "the batch to complete")
        done = client.batches.retrieve(batch.id)
        assert done.request_counts.completed == LINES and done.error_file_id is None
        output = [json.loads(line) for line in
                  client.files.content(done.output_file_id).text.splitlines()]
    finally:
        second.stop()
    assert sorted(line["custom_id"] for line in output) == sorted(f"r{n}" for n in range(LINES))
    by_id = {line["custom_id"]: line for line in output}
    for custom_id, result in before.items():  # the same answer: not run a second time
        assert by_id[custom_id] == json.loads(result)
