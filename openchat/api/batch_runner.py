"""The batch runner: one per service worker, started and stopped by the service's lifecycle
hooks. It validates new batches (their input file becomes their lines, or the batch fails
with its `errors`), claims lines through the batch store (so each line runs once however
many replicas share the database), runs at most `batch.concurrency` of them at a time at
the engine's batch priority (behind interactive requests), keeps each result, and
finalizes batches that have nothing left to run into their output and error files. It
charges each answered line's tokens to the batch key's token budget and claims no line of
a key whose token window is spent (access/budget.py), and deletes expired files.

A line the engine could not take (503: starting, restarting, stopping) is handed back and
runs again later; every other outcome, a 400 included, is the line's result.

Batch work fills idle time only: no line is claimed while an interactive request is in
flight, and when one reaches the engine the lines running are aborted and handed back
(`preempt`, batch.preempt_for_interactive): vLLM's priorities order the queue but do not
stop a running batch line from sharing every step, and so slowing, the interactive one.
A line preempted `batch.max_preemptions` times runs to its end, one such line at a time.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
import time
import uuid
from collections.abc import Callable
from datetime import timedelta
from typing import Any, BinaryIO

from openchat.access.budget import TokenBudget
from openchat.api.batch_lines import LineExecutor
from openchat.config import BatchSettings
from openchat.generation.engine import PRIORITY
from openchat.protocol.batches import (
    BatchInputLine,
    batch_errors,
    batch_usage,
    body_model,
    check_batch_file,
    line_tokens,
    output_line,
    oversized_line,
)
from openchat.protocol.errors import APIError
from openchat.storage.batches import BatchLine, BatchStore, StoredBatch
from openchat.storage.files import FileStore
from openchat.telemetry import metrics

logger = logging.getLogger(__name__)
PURGE_INTERVAL_S = 60.0  # how often a runner deletes expired files


class BatchRunner:
    def __init__(self, settings: BatchSettings, store: Callable[[], BatchStore],
                 files: Callable[[], FileStore], execute: LineExecutor,
                 ready: Callable[[], bool], *, budget: TokenBudget | None = None,
                 max_body_bytes: int | None = None) -> None:
        self.settings = settings
        self.worker = f"runner-{uuid.uuid4().hex[:16]}"
        self.lease = timedelta(seconds=settings.lease_s)
        self._store, self._files, self._execute, self._ready = store, files, execute, ready
        self._budget, self._max_body_bytes = budget, max_body_bytes
        self._lines: dict[asyncio.Task, BatchLine] = {}
        self._preempted: set[asyncio.Task] = set()
        self._handing_back: set[asyncio.Task] = set()  # preempted lines' unclaims
        self._answered: set[asyncio.Task] = set()  # lines being kept: not preempted
        self._main: asyncio.Task | None = None
        self._batches: dict[str, StoredBatch | None] = {}  # of the lines in flight
        self._purged_at = float("-inf")
        # A claim runs in a thread: stop() waits for one under way, so that what it took
        # is handed back too, and no claim starts after it.
        self._claiming = threading.Lock()
        self._stopping = False
        self._hold: Callable[[], bool] = lambda: False

    def start(self, hold: Callable[[], bool] = lambda: False) -> None:
        """Run in the background on the current event loop; while `hold()` is true (the
        service drains, or interactive requests are in flight) no new line is claimed."""
        self._hold = hold
        if self._main is None:
            self._main = asyncio.get_running_loop().create_task(self.run())

    def stop(self) -> None:
        """Stop claiming, abort the lines in flight and hand them back to the queue."""
        self._stopping = True
        for task in [*self._lines, *([self._main] if self._main else [])]:
            task.cancel()
        self._main = None
        try:
            with self._claiming:
                self._store().release(self.worker)
        except Exception:  # the database may be gone too; their lease will lapse
            logger.exception("could not hand back the batch lines in flight")

    async def run(self) -> None:
        logger.info("batch runner %s started (concurrency %d)", self.worker,
                    self.settings.concurrency)
        while True:
            try:
                await self.step()
            except asyncio.CancelledError:
                raise
            except Exception:  # the database is down, say: try again next round
                logger.exception("batch runner step failed")
            await self._idle()

    async def step(self) -> None:
        """One round: renew claims, finalize what is finished, validate new batches,
        delete expired files, claim free slots (none of keys whose token budget is spent)."""
        store = self._store()
        if self._lines:
            await asyncio.to_thread(store.heartbeat, self.worker)
        for batch in await asyncio.to_thread(store.to_finalize, self.worker, self.lease):
            await self._finalize(store, batch)
        for batch in await asyncio.to_thread(store.to_validate):
            await self._validate(store, batch)
        if time.monotonic() - self._purged_at >= PURGE_INTERVAL_S:
            self._purged_at = time.monotonic()
            await asyncio.to_thread(self._files().purge_expired)
        free = self.settings.concurrency - len(self._lines)
        if free <= 0 or self._hold() or not self._ready():
            return
        held = await self._spent(store)
        exempt = sum(self._exempt(line) for line in self._lines.values())
        for line in await asyncio.to_thread(self._claim, store, free, held):
            if self._exempt(line):
                if exempt:  # one at a time: it shares every step with interactive requests
                    await asyncio.to_thread(store.unclaim, line, self.worker)
                    continue
                exempt += 1
            task = asyncio.get_running_loop().create_task(self._run_line(store, line))
            self._lines[task] = line
            task.add_done_callback(self._forget)

    def _forget(self, task: asyncio.Task) -> None:
        line = self._lines.pop(task, None)
        if task in self._preempted and line is not None and not self._stopping:
            # Handed back here, not in the line's task: a task cancelled before its first
            # step never runs its own except clause. A line that got as far as being kept
            # is `done` and stays so (unclaim only touches running lines).
            handing_back = asyncio.get_running_loop().create_task(self._hand_back(line))
            self._handing_back.add(handing_back)
            handing_back.add_done_callback(self._handing_back.discard)
        self._preempted.discard(task)
        self._answered.discard(task)

    async def _hand_back(self, line: BatchLine) -> None:
        try:
            await asyncio.to_thread(self._store().unclaim, line, self.worker)
        except Exception:  # the database is down: the claim lapses after lease_s instead
            logger.exception("could not hand back preempted batch line %s/%d",
                             line.batch_id, line.number)

    def _exempt(self, line: BatchLine) -> bool:
        """Whether `line` has been preempted `max_preemptions` times and now runs to its end.
        (`attempt` counts the line's claims, this one included.)"""
        return (self.settings.preempt_for_interactive
                and line.attempt > self.settings.max_preemptions)

    def preempt(self) -> int:
        """An interactive request has reached the engine: abort the lines running (those
        preempted fewer than `max_preemptions` times) so they take none of its steps; each
        goes back to the queue and starts over later. How many were aborted."""
        if not self.settings.preempt_for_interactive:
            return 0
        aborted = 0
        for task, line in list(self._lines.items()):
            if not self._exempt(line) and task not in self._preempted | self._answered:
                self._preempted.add(task)
                task.cancel()
                aborted += 1
        if aborted:
            metrics.BATCH_PREEMPTIONS.inc(aborted)
        return aborted

    def _claim(self, store: BatchStore, n: int, held: set[str]) -> list[BatchLine]:
        with self._claiming:
            return [] if self._stopping else store.claim(self.worker, n, self.lease, held)

    async def _spent(self, store: BatchStore) -> set[str]:
        """The keys with lines waiting whose token window has no room now."""
        if self._budget is None:
            return set()
        owners = await asyncio.to_thread(store.waiting_owners)
        return {owner for owner in owners if await self._budget.wait_s(owner) > 0}

    async def _validate(self, store: BatchStore, batch: StoredBatch) -> None:
        """Check a new batch's input file: start it with its lines (a line whose body is
        over the body limit is answered 413 at once, as the live route would), or fail it
        with OpenAI's `errors` when the file as a whole cannot run."""
        opened = await asyncio.to_thread(self._files().open, batch.input_file_id,
                                         batch.owner)
        if opened is None:
            missing = APIError(f"The input file {batch.input_file_id} no longer exists.",
                               param="input_file_id", code="invalid_file")
            await asyncio.to_thread(store.fail, batch.id, batch_errors([missing]))
            return
        lines, errors = await asyncio.to_thread(self._check, opened[1], batch.endpoint)
        if errors is not None:
            if await asyncio.to_thread(store.fail, batch.id, errors):
                logger.info("batch %s failed validation: %s", batch.id,
                            errors["data"][0]["message"])
            return
        answered = {}
        for line in lines if self._max_body_bytes is not None else ():
            too_large = oversized_line(line.body, self._max_body_bytes)
            if too_large is not None:
                answered[line.number] = (413, output_line(
                    f"batch_req_{uuid.uuid4().hex}", line.custom_id, 413,
                    f"req_{uuid.uuid4().hex}", too_large))
        await asyncio.to_thread(
            store.start, batch.id, [(line.number, line.custom_id, line.url, line.body)
                                    for line in lines],
            model=body_model(lines[0].body), answered=answered)

    def _check(self, handle: BinaryIO, endpoint: str,
               ) -> tuple[list[BatchInputLine], dict[str, Any] | None]:
        """The input file read from disk a line at a time (only its parsed lines are kept)."""
        with handle:
            return check_batch_file(handle, endpoint, self.settings.max_lines)

    async def _idle(self) -> None:
        """Until the poll interval passes or a line finishes (its slot is free again)."""
        waiting = [asyncio.ensure_future(asyncio.sleep(self.settings.poll_interval_s))]
        waiting += list(self._lines)
        await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
        waiting[0].cancel()

    async def _run_line(self, store: BatchStore, line: BatchLine) -> None:
        PRIORITY.set(self.settings.priority)  # this task's engine requests only
        try:
            batch = await self._batch(store, line.batch_id)
            scopes = [] if batch is None else batch.scope_list
            status, body = await self._execute(line.url, line.body, scopes)
            self._answered.add(asyncio.current_task())  # nothing left to preempt
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.exception("batch line %s/%d failed", line.batch_id, line.number)
            return  # its claim lapses and it runs again
        if status == 503:  # the engine is (re)starting or stopping: not the line's fault
            await asyncio.to_thread(store.unclaim, line, self.worker)
            await asyncio.sleep(self.settings.poll_interval_s)  # its slot waits a little
            return
        request_id = f"req_{uuid.uuid4().hex}"
        result = output_line(f"batch_req_{uuid.uuid4().hex}", line.custom_id, status,
                             request_id, body)
        if await asyncio.to_thread(store.finish, line, self.worker, status, result):
            metrics.BATCH_LINES.labels("completed" if status == 200 else "failed").inc()
            if self._budget is not None and batch is not None and status == 200:
                try:
                    await self._budget.charge(batch.owner, line_tokens(body))
                except Exception:  # the shared store is down: the line's result stands
                    logger.exception("could not charge batch line %s/%d's tokens",
                                     line.batch_id, line.number)

    async def _batch(self, store: BatchStore, batch_id: str) -> StoredBatch | None:
        if batch_id not in self._batches:
            self._batches[batch_id] = await asyncio.to_thread(store.get, batch_id, None)
        return self._batches[batch_id]

    async def _finalize(self, store: BatchStore, batch: StoredBatch) -> None:
        """Write the output (status 200) and error (the rest) files; then the batch ends."""
        results = await asyncio.to_thread(store.results, batch.id)
        files = self._files()
        output = [line for status, line in results if status == 200]
        errors = [line if status is not None else _dropped(custom_id=line, batch=batch)
                  for status, line in results if status != 200]

        async def save(lines: list[str], kind: str) -> str | None:
            if not lines:
                return None
            data = ("\n".join(lines) + "\n").encode()
            saved = await asyncio.to_thread(files.save, data, f"{batch.id}_{kind}.jsonl",
                                            "batch_output", batch.owner,
                                            batch.output_expires_s)
            return saved.id

        output_id, error_id = await save(output, "output"), await save(errors, "error")
        usage = batch_usage([json.loads(line) for line in output])
        with contextlib.suppress(KeyError):
            del self._batches[batch.id]
        if await asyncio.to_thread(store.complete, batch.id, self.worker,
                                   output_file_id=output_id, error_file_id=error_id,
                                   usage=usage):
            logger.info("batch %s finalized: %d ok, %d failed", batch.id, len(output),
                        len(errors))


def _dropped(custom_id: str, batch: StoredBatch) -> str:
    """The error line of a line that never ran, as OpenAI writes one: no response."""
    expired = batch.outcome == "expired"
    code = "batch_expired" if expired else "batch_cancelled"
    message = ("This request could not be executed before the completion window expired."
               if expired else "This request was not executed: the batch was cancelled.")
    return json.dumps({"id": f"batch_req_{uuid.uuid4().hex}", "custom_id": custom_id,
                       "response": None, "error": {"code": code, "message": message}})
