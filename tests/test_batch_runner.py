"""The batch runner's mechanics over a real batch store and file store (SQLite), with a
scripted line executor in place of the pipeline (the end-to-end tests run real lines):
bounded concurrency, the batch priority, output and error files, and a stop that hands
unfinished lines to the next runner, which runs only those."""

from __future__ import annotations

import asyncio
import json
import time
from datetime import timedelta

from openchat.api.batch_runner import BatchRunner
from openchat.config import BatchSettings
from openchat.generation.engine import PRIORITY
from openchat.storage.batches import BatchStore
from openchat.storage.files import FileStore

SETTINGS = BatchSettings(concurrency=2, poll_interval_s=0.02, priority=7)


def stores(tmp_path) -> tuple[BatchStore, FileStore]:
    url = f"sqlite:///{tmp_path}/batches.db"
    return BatchStore(url), FileStore(url, tmp_path / "files")


def create(store: BatchStore, n: int):
    return store.create(owner="key1", scopes=["batch", "inference"],
                        endpoint="/v1/chat/completions", input_file_id="file-1", metadata=None,
                        lines=[(i + 1, f"c{i}", "/v1/chat/completions", json.dumps({"n": i}))
                               for i in range(n)])


async def until(condition, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.02)


def test_runner_runs_every_line_once_at_batch_priority_and_writes_the_files(tmp_path):
    store, files = stores(tmp_path)
    batch = create(store, 5)
    calls, running, most = [], set(), [0]

    async def execute(url, body, scopes):
        n = json.loads(body)["n"]
        assert PRIORITY.get() == 7 and scopes == ["batch", "inference"]
        running.add(n)
        most[0] = max(most[0], len(running))
        await asyncio.sleep(0.05)
        running.discard(n)
        calls.append(n)
        if n == 3:
            return 400, {"error": {"message": "bad", "type": "invalid_request_error",
                                   "param": "max_tokens", "code": "invalid_value"}}
        return 200, {"n": n}

    async def scenario():
        runner = BatchRunner(SETTINGS, lambda: store, lambda: files, execute, lambda: True)
        runner.start()
        await until(lambda: store.get(batch.id, None).status == "completed")
        runner.stop()
        assert PRIORITY.get() == 0  # only the lines' own tasks run at batch priority

    asyncio.run(scenario())
    assert sorted(calls) == [0, 1, 2, 3, 4] and most[0] == 2
    done = store.get(batch.id, None)
    assert (done.total, done.completed, done.failed) == (5, 4, 1)
    output = [json.loads(line) for line in files.content(done.output_file_id, "key1").splitlines()]
    assert [line["custom_id"] for line in output] == ["c0", "c1", "c2", "c4"]
    assert output[0]["response"]["body"] == {"n": 0}
    (error,) = [json.loads(line) for line in
                files.content(done.error_file_id, "key1").splitlines()]
    assert error["custom_id"] == "c3" and error["response"]["status_code"] == 400
    assert files.get(done.output_file_id, "key2") is None  # the batch owner's files


def test_a_stopped_runner_hands_back_its_lines_and_the_next_runs_only_those(tmp_path):
    store, files = stores(tmp_path)
    batch = create(store, 5)
    first_calls, second_calls = [], []

    async def stuck_after_two(url, body, scopes):
        n = json.loads(body)["n"]
        first_calls.append(n)
        if n >= 2:
            await asyncio.Event().wait()  # never answers: the runner is stopped first
        return 200, {"n": n}

    async def fast(url, body, scopes):
        second_calls.append(json.loads(body)["n"])
        return 200, {}

    async def scenario():
        first = BatchRunner(SETTINGS, lambda: store, lambda: files, stuck_after_two,
                            lambda: True)
        first.start()
        await until(lambda: store.counts(batch.id)[1] == 2 and len(first_calls) == 4)
        first.stop()  # lines 3 and 4 were running: handed back
        second = BatchRunner(SETTINGS, lambda: store, lambda: files, fast, lambda: True)
        second.start()
        await until(lambda: store.get(batch.id, None).status == "completed")
        second.stop()

    asyncio.run(scenario())
    assert sorted(first_calls) == [0, 1, 2, 3]
    assert sorted(second_calls) == [2, 3, 4]  # finished lines never run again
    assert store.get(batch.id, None).completed == 5


def test_an_unavailable_engine_puts_the_line_back(tmp_path):
    store, files = stores(tmp_path)
    batch = create(store, 1)
    answers = [(503, {"error": {"message": "starting"}}), (200, {})]

    async def execute(url, body, scopes):
        return answers.pop(0)

    async def scenario():
        runner = BatchRunner(SETTINGS, lambda: store, lambda: files, execute, lambda: True)
        runner.start()
        await until(lambda: store.get(batch.id, None).status == "completed")
        runner.stop()

    asyncio.run(scenario())
    assert answers == [] and store.get(batch.id, None).completed == 1


def test_a_held_runner_claims_nothing_and_an_engine_not_ready_neither(tmp_path):
    store, files = stores(tmp_path)
    batch = create(store, 2)

    async def execute(url, body, scopes):
        raise AssertionError("nothing may run")

    async def scenario():
        for hold, ready in ((True, True), (False, False)):
            runner = BatchRunner(SETTINGS, lambda: store, lambda: files, execute,
                                 lambda ready=ready: ready)
            runner.start(hold=lambda hold=hold: hold)
            await asyncio.sleep(0.2)
            runner.stop()

    asyncio.run(scenario())
    assert store.counts(batch.id) == (2, 0, 0)
    assert [line.number for line in store.claim("w", 5, timedelta(seconds=60))] == [1, 2]
