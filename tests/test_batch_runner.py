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


def create(store: BatchStore, n: int, owner: str | None = "key1"):
    """A batch already validated, with `n` lines."""
    batch = store.create(owner=owner, scopes=["batch", "inference"],
                         endpoint="/v1/chat/completions", input_file_id="file-1",
                         metadata=None)
    assert store.start(batch.id, [(i + 1, f"c{i}", "/v1/chat/completions",
                                   json.dumps({"n": i})) for i in range(n)])
    return batch


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


def test_the_runner_validates_a_new_batch_into_its_lines_or_fails_it(tmp_path):
    """Validation reads the input file: good lines run (one over the body limit is
    answered 413 at once), a file that cannot run fails the batch with `errors`."""
    store, files = stores(tmp_path)

    def line(custom_id: str, url: str = "/v1/chat/completions", size: int = 1) -> str:
        return json.dumps({"custom_id": custom_id, "method": "POST", "url": url,
                           "body": {"n": 0, "pad": "x" * size}})

    def batch_from(content: str):
        uploaded = files.save(content.encode(), "in.jsonl", "batch", "key1")
        return store.create(owner="key1", scopes=["batch"], endpoint="/v1/chat/completions",
                            input_file_id=uploaded.id, metadata=None)

    good = batch_from("\n".join([line("a"), line("big", size=2000), line("b")]) + "\n")
    wrong = batch_from(line("a") + "\n" + line("b", "/v1/completions") + "\n")
    empty = batch_from("\n")
    gone = store.create(owner="key1", scopes=None, endpoint="/v1/chat/completions",
                        input_file_id="file-missing", metadata=None)
    ran = []

    async def execute(url, body, scopes):
        ran.append(json.loads(body)["n"])
        return 200, {"usage": {"total_tokens": 3}}

    async def scenario():
        runner = BatchRunner(SETTINGS, lambda: store, lambda: files, execute, lambda: True,
                             max_body_bytes=1024)
        runner.start()
        await until(lambda: store.get(good.id, None).status == "completed")
        runner.stop()

    asyncio.run(scenario())
    done = store.get(good.id, None)
    assert (done.total, done.completed, done.failed) == (3, 2, 1) and len(ran) == 2
    (too_large,) = [json.loads(text) for text in
                    files.content(done.error_file_id, "key1").splitlines()]
    assert too_large["custom_id"] == "big" and too_large["response"]["status_code"] == 413
    for batch, code, number in ((wrong, "invalid_url", 2), (empty, "empty_file", None),
                                (gone, "invalid_file", None)):
        view = store.view(store.get(batch.id, None))
        assert view["status"] == "failed" and view["failed_at"] is not None, view
        assert [(e["code"], e["line"]) for e in view["errors"]["data"]] == [(code, number)]


def test_lines_charge_their_keys_tokens_and_wait_while_its_window_is_spent(tmp_path):
    """Each answered line's tokens go to its key's token window; while the window has no
    room, none of the key's lines is claimed (they wait, they do not fail); another key's
    batch runs meanwhile."""
    from openchat.access.budget import TokenBudget
    from openchat.access.keys import APIKey
    from openchat.access.ratelimit import KeyLimits, open_rate_limiter
    from openchat.config import AuthSettings

    store, files = stores(tmp_path)
    spent, fresh = create(store, 2, owner="spent"), create(store, 2, owner="fresh")
    limiter = open_rate_limiter("memory://", window=2)
    keys = {name: APIKey(id=name, name=name, prefix="oc-", scopes="batch inference",
                         secret_hash=name, tpm=100) for name in ("spent", "fresh")}
    budget = TokenBudget(lambda: limiter, keys.get, AuthSettings())
    limits = KeyLimits(rpm=60, tpm=100, max_concurrency=10)
    ran: list[tuple[str, float]] = []

    async def execute(url, body, scopes):
        ran.append((url, time.monotonic()))
        return 200, {"usage": {"prompt_tokens": 4, "completion_tokens": 6, "total_tokens": 10}}

    async def scenario():
        await limiter.charge("spent", limits, 150)  # its live calls used more than a window
        assert await budget.wait_s("spent") > 0 and await budget.wait_s("fresh") == 0
        runner = BatchRunner(SETTINGS, lambda: store, lambda: files, execute, lambda: True,
                             budget=budget)
        started = time.monotonic()
        runner.start()
        await until(lambda: store.get(fresh.id, None).status == "completed")
        assert store.counts(spent.id) == (2, 0, 0)  # held meanwhile, not failed
        assert (await limiter.token_window("fresh", limits)).count() > 0  # charged
        await until(lambda: store.get(spent.id, None).status == "completed", timeout=15)
        runner.stop()
        assert time.monotonic() - started > 0.5

    asyncio.run(scenario())
    assert store.get(spent.id, None).completed == 2 and len(ran) == 4


def test_an_interactive_request_preempts_running_lines_which_start_over(tmp_path):
    """preempt() aborts the lines running and hands them back; they run again from the
    start. A line preempted max_preemptions times already is left to finish, and such
    lines run one at a time."""
    store, files = stores(tmp_path)
    batch = create(store, 2)
    started: list[int] = []
    cancelled: list[int] = []
    release = asyncio.Event()

    async def execute(url, body, scopes):
        n = json.loads(body)["n"]
        started.append(n)
        try:
            await release.wait()
        except asyncio.CancelledError:
            cancelled.append(n)
            raise
        return 200, {"n": n}

    settings = SETTINGS.model_copy(update={"max_preemptions": 1})

    async def scenario():
        runner = BatchRunner(settings, lambda: store, lambda: files, execute, lambda: True)
        runner.start()
        await until(lambda: len(started) == 2)
        assert runner.preempt() == 2
        await until(lambda: len(started) == 3)  # handed back, claimed and begun again
        await asyncio.sleep(0.2)  # several polls: the other exempt line waits its turn
        assert len(started) == 3 and sorted(cancelled) == [0, 1]
        assert runner.preempt() == 0  # preempted once already: it runs to its end
        release.set()
        await until(lambda: store.get(batch.id, None).status == "completed")
        runner.stop()

    asyncio.run(scenario())
    assert sorted(started) == [0, 0, 1, 1]
    done = store.get(batch.id, None)
    assert (done.total, done.completed, done.failed) == (2, 2, 0)


def test_preemption_can_be_turned_off(tmp_path):
    store, files = stores(tmp_path)
    create(store, 1)
    running = asyncio.Event()

    async def execute(url, body, scopes):
        running.set()
        await asyncio.sleep(0.2)
        return 200, {}

    settings = SETTINGS.model_copy(update={"preempt_for_interactive": False})

    async def scenario():
        runner = BatchRunner(settings, lambda: store, lambda: files, execute, lambda: True)
        runner.start()
        await running.wait()
        assert runner.preempt() == 0
        runner.stop()

    asyncio.run(scenario())
