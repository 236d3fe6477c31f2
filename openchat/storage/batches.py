"""Batches and their lines, in SQL, so that every replica's runner shares one queue.

A batch is created `validating`, with no lines. A runner checks its input file and either
`start`s it (all its lines, `pending`, and status `in_progress`) or `fail`s it with its
`errors`; both are a compare-and-set on the status, so one runner's validation wins.

A runner claims lines with a compare-and-set on each line's `attempt` counter, so a line
is run by one runner at a time however many replicas there are; the claim carries the
runner's id and a time it renews (`heartbeat`) while it runs the line. A line whose claim
was not renewed for the lease (its replica died) is claimed again; a runner that stops
cleanly hands its lines back at once (`release`). A finished line (`done`) keeps its
output line and is never run again, so a restart resumes only what was unfinished.

When no line of a batch is pending or running, one runner wins the batch's finalization
(the same compare-and-set, on the batch), writes its output and error files and gives it
its final status: completed, cancelled (after `cancel`) or expired (past `expires_at`).
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Collection, Sequence
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import Any

from sqlalchemy import and_, exists, func, insert, or_, update
from sqlmodel import Session, col, select

from openchat.databases import create_tables, open_engine
from openchat.storage.batch_tables import (
    ACTIVE,
    EXPIRY,
    BatchesModel,
    BatchLine,
    StoredBatch,
)
from openchat.storage.files import new_id

__all__ = ["ACTIVE", "EXPIRY", "BatchLine", "BatchStore", "StoredBatch", "open_batch_store"]

class BatchStore:
    def __init__(self, url: str) -> None:
        self._engine = open_engine(url, "the batch store")
        self.dialect = self._engine.dialect.name
        create_tables(self._engine, BatchesModel.metadata,
                      {StoredBatch.__table__: ["output_expires_s"]})
        # Whose lines this store claimed last (claim's turns): owner -> turn number.
        self._served: dict[str | None, int] = {}
        self._turns = itertools.count()

    # -- the API's side --------------------------------------------------------------------

    def create(self, *, owner: str | None, scopes: list[str] | None, endpoint: str,
               input_file_id: str, metadata: dict[str, str] | None,
               output_expires_s: int | None = None) -> StoredBatch:
        """A batch `validating`: a runner checks its input file, then starts or fails it."""
        now = datetime.now(UTC)
        batch = StoredBatch(id=new_id("batch_"), owner=owner,
                            scopes=None if scopes is None else json.dumps(sorted(scopes)),
                            endpoint=endpoint, input_file_id=input_file_id,
                            completion_window="24h", status="validating",
                            metadata_json=None if metadata is None else json.dumps(metadata),
                            output_expires_s=output_expires_s,
                            created_at=now, expires_at=now + EXPIRY)
        with Session(self._engine, expire_on_commit=False) as session:
            session.add(batch)
            session.commit()
        return batch

    def to_validate(self, limit: int = 10) -> list[StoredBatch]:
        """Batches waiting for validation, oldest first."""
        query = select(StoredBatch).where(StoredBatch.status == "validating")
        with Session(self._engine, expire_on_commit=False) as session:
            return list(session.exec(query.order_by(col(StoredBatch.id)).limit(limit)))

    def start(self, batch_id: str, lines: Sequence[tuple[int, str, str, str]], *,
              model: str | None = None,
              answered: dict[int, tuple[int, dict[str, Any]]] | None = None) -> bool:
        """A validated batch's lines (number, custom_id, url, body), and it is in progress.
        `answered`: lines that validation already answered (number -> status and output
        line), kept `done`. False if it is no longer validating (cancelled, or another
        runner validated it first): nothing is written."""
        answered = answered or {}
        now = datetime.now(UTC)
        with Session(self._engine) as session:
            won = session.execute(update(StoredBatch).where(
                col(StoredBatch.id) == batch_id, col(StoredBatch.status) == "validating",
            ).values(status="in_progress", in_progress_at=now, model=model,
                     total=len(lines)))
            if won.rowcount != 1:
                session.rollback()
                return False
            rows = [{"batch_id": batch_id, "number": number, "custom_id": custom_id,
                     "url": url, "body": body, "state": "pending", "attempt": 0,
                     "status_code": None, "result": None}
                    for number, custom_id, url, body in lines]
            for row in rows:
                if row["number"] in answered:
                    status, result = answered[row["number"]]
                    row.update(state="done", status_code=status, result=json.dumps(result))
            if rows:
                session.execute(insert(BatchLine), rows)
            session.commit()
        return True

    def fail(self, batch_id: str, errors: dict[str, Any]) -> bool:
        """A batch whose input file cannot run: `failed`, with OpenAI's `errors`."""
        with Session(self._engine) as session:
            won = session.execute(update(StoredBatch).where(
                col(StoredBatch.id) == batch_id, col(StoredBatch.status) == "validating",
            ).values(status="failed", failed_at=datetime.now(UTC),
                     errors_json=json.dumps(errors)))
            session.commit()
        return won.rowcount == 1

    def waiting_owners(self) -> list[str]:
        """The keys that own batches in progress with lines waiting to be claimed."""
        waiting = select(BatchLine.batch_id).where(BatchLine.state == "pending")
        with Session(self._engine) as session:
            return [owner for owner in session.exec(
                select(StoredBatch.owner).where(StoredBatch.status == "in_progress",
                                                col(StoredBatch.id).in_(waiting.distinct()))
                .distinct()).all() if owner is not None]

    def get(self, batch_id: str, owner: str | None) -> StoredBatch | None:
        with Session(self._engine, expire_on_commit=False) as session:
            row = session.get(StoredBatch, batch_id)
        if row is None or (owner is not None and row.owner != owner):
            return None
        return row

    def list(self, owner: str | None, *, limit: int,
             after: str | None = None) -> list[StoredBatch]:
        """Newest first; `after`: continue past that batch id."""
        query = select(StoredBatch)
        if owner is not None:
            query = query.where(StoredBatch.owner == owner)
        if after is not None:
            query = query.where(col(StoredBatch.id) < after)
        with Session(self._engine, expire_on_commit=False) as session:
            return list(session.exec(query.order_by(col(StoredBatch.id).desc()).limit(limit)))

    def counts(self, batch_id: str) -> tuple[int, int, int]:
        """(total, completed, failed) of a batch's lines, as they stand."""
        query = (select(BatchLine.status_code, func.count())
                 .where(BatchLine.batch_id == batch_id, BatchLine.state == "done")
                 .group_by(col(BatchLine.status_code)))
        with Session(self._engine) as session:
            done = dict(session.exec(query).all())
            total = session.exec(select(func.count()).where(
                BatchLine.batch_id == batch_id)).one()
        completed = done.get(200, 0)
        return total, completed, sum(done.values()) - completed

    def view(self, batch: StoredBatch) -> dict[str, Any]:
        """The Batch object, with live counts while it runs."""
        return batch.as_object(self.counts(batch.id) if batch.status in ACTIVE else None)

    def cancel(self, batch_id: str, owner: str | None) -> StoredBatch | None:
        """Stop a running batch: its pending lines are dropped, running ones finish, then
        it is finalized as cancelled. A batch that has ended is returned unchanged."""
        if self.get(batch_id, owner) is None:
            return None
        now = datetime.now(UTC)
        with Session(self._engine) as session:
            session.execute(update(StoredBatch).where(
                col(StoredBatch.id) == batch_id,
                col(StoredBatch.status).in_(("validating", "in_progress")),
            ).values(status="cancelling", cancelling_at=now, outcome="cancelled"))
            session.execute(update(BatchLine).where(
                col(BatchLine.batch_id) == batch_id, col(BatchLine.state) == "pending",
            ).values(state="dropped"))
            session.commit()
        return self.get(batch_id, owner)

    # -- the runners' side -----------------------------------------------------------------

    def claim(self, worker: str, n: int, lease: timedelta,
              held: Collection[str] = ()) -> list[BatchLine]:
        """Up to `n` lines for `worker` to run: pending ones of running batches and lines
        whose claim has lapsed, none of batches owned by a key in `held` (its token budget
        is spent for now). Keys take turns, the one this store served longest ago first,
        so one key's large batch does not hold back another's; within a key, its oldest
        batch first, in line order."""
        now = datetime.now(UTC)
        runnable = or_(col(BatchLine.state) == "pending",
                       and_(col(BatchLine.state) == "running",
                            col(BatchLine.claimed_at) < now - lease))
        lines = (select(BatchLine).join(StoredBatch, col(StoredBatch.id) == BatchLine.batch_id)
                 .where(StoredBatch.status == "in_progress", runnable)
                 .order_by(col(BatchLine.batch_id), col(BatchLine.number)).limit(n * 2))
        claimed: list[BatchLine] = []
        with Session(self._engine, expire_on_commit=False) as session:
            owners = [owner for owner in session.exec(
                select(StoredBatch.owner).distinct().where(
                    StoredBatch.status == "in_progress",
                    exists().where(col(BatchLine.batch_id) == StoredBatch.id, runnable)))
                if owner is None or owner not in held]
            queues = {owner: list(session.exec(lines.where(
                col(StoredBatch.owner).is_(None) if owner is None
                else StoredBatch.owner == owner)).all()) for owner in owners}
            # Served longest ago first; among keys not served yet, the oldest batch first.
            owners = sorted((owner for owner in owners if queues[owner]), key=lambda owner: (
                self._served.get(owner, -1), queues[owner][0].batch_id))
            while len(claimed) < n and any(queues.values()):
                for owner in owners:
                    if queues[owner] and len(claimed) < n:
                        line = queues[owner].pop(0)
                        if self._claim_line(session, line, worker, now):
                            claimed.append(line)
                            self._served[owner] = next(self._turns)
        return claimed

    @staticmethod
    def _claim_line(session: Session, line: BatchLine, worker: str, now: datetime) -> bool:
        """Compare-and-set on the line's attempt and state: one runner wins it."""
        won = session.execute(update(BatchLine).where(
            col(BatchLine.batch_id) == line.batch_id, col(BatchLine.number) == line.number,
            col(BatchLine.attempt) == line.attempt, col(BatchLine.state) == line.state,
        ).values(state="running", attempt=line.attempt + 1, claimed_by=worker,
                 claimed_at=now))
        session.commit()
        return won.rowcount == 1

    def heartbeat(self, worker: str) -> None:
        """Renew the claims of the lines `worker` is running."""
        with Session(self._engine) as session:
            session.execute(update(BatchLine).where(
                col(BatchLine.claimed_by) == worker, col(BatchLine.state) == "running",
            ).values(claimed_at=datetime.now(UTC)))
            session.commit()

    def finish(self, line: BatchLine, worker: str, status_code: int,
               result: dict[str, Any]) -> bool:
        """Keep a line's output; False if its claim was lost (another runner has it)."""
        with Session(self._engine) as session:
            done = session.execute(update(BatchLine).where(
                col(BatchLine.batch_id) == line.batch_id, col(BatchLine.number) == line.number,
                col(BatchLine.claimed_by) == worker, col(BatchLine.state) == "running",
            ).values(state="done", status_code=status_code, result=json.dumps(result)))
            session.commit()
        return done.rowcount == 1

    def unclaim(self, line: BatchLine, worker: str) -> None:
        """Hand one line back unrun (the engine could not take it now)."""
        with Session(self._engine) as session:
            session.execute(update(BatchLine).where(
                col(BatchLine.batch_id) == line.batch_id, col(BatchLine.number) == line.number,
                col(BatchLine.claimed_by) == worker, col(BatchLine.state) == "running",
            ).values(state="pending", claimed_by=None, claimed_at=None))
            session.commit()

    def release(self, worker: str) -> None:
        """Hand `worker`'s running lines back (it is stopping): they run again elsewhere."""
        with Session(self._engine) as session:
            session.execute(update(BatchLine).where(
                col(BatchLine.claimed_by) == worker, col(BatchLine.state) == "running",
            ).values(state="pending", claimed_by=None, claimed_at=None))
            session.commit()

    def to_finalize(self, worker: str, lease: timedelta) -> list[StoredBatch]:
        """Batches with nothing left to run that `worker` has won the right to finalize
        (expired ones have their pending lines dropped first)."""
        now = datetime.now(UTC)
        with Session(self._engine, expire_on_commit=False) as session:
            session.execute(update(StoredBatch).where(
                col(StoredBatch.status) == "in_progress", col(StoredBatch.expires_at) < now,
            ).values(status="finalizing", outcome="expired", finalizing_at=now))
            expired = select(StoredBatch.id).where(StoredBatch.outcome == "expired",
                                                   StoredBatch.status == "finalizing")
            session.execute(update(BatchLine).where(
                col(BatchLine.batch_id).in_(expired), col(BatchLine.state) == "pending",
            ).values(state="dropped"))
            ending = select(StoredBatch.id).where(
                col(StoredBatch.status).in_(("cancelling", "finalizing")))
            session.execute(update(BatchLine).where(  # their runner died: not run again
                col(BatchLine.batch_id).in_(ending), col(BatchLine.state) == "running",
                col(BatchLine.claimed_at) < now - lease,
            ).values(state="dropped"))
            session.commit()
            unfinished = select(BatchLine.batch_id).where(
                col(BatchLine.state).in_(("pending", "running"))).distinct()
            candidates = session.exec(select(StoredBatch).where(
                col(StoredBatch.status).in_(("in_progress", "cancelling", "finalizing")),
                col(StoredBatch.id).not_in(unfinished),
                or_(col(StoredBatch.finalizer).is_(None),
                    col(StoredBatch.finalizing_at) < now - lease))).all()
            won = []
            for batch in candidates:
                claimed = session.execute(update(StoredBatch).where(
                    col(StoredBatch.id) == batch.id, col(StoredBatch.status) == batch.status,
                    col(StoredBatch.finalizer).is_(None) if batch.finalizer is None
                    else col(StoredBatch.finalizer) == batch.finalizer,
                ).values(finalizer=worker, finalizing_at=now,
                         status="finalizing" if batch.status == "in_progress"
                         else batch.status,
                         outcome=batch.outcome or "completed"))
                session.commit()
                if claimed.rowcount == 1:
                    won.append(batch)
        return won

    def results(self, batch_id: str) -> list[tuple[int | None, str]]:
        """(status_code, output line JSON) of the finished lines and (None, custom_id) of
        the dropped ones (cancelled, expired), in file order."""
        with Session(self._engine) as session:
            rows = session.exec(
                select(BatchLine.status_code, BatchLine.result, BatchLine.custom_id)
                .where(BatchLine.batch_id == batch_id,
                       col(BatchLine.state).in_(("done", "dropped")))
                .order_by(col(BatchLine.number))).all()
        return [(status, result) if result is not None else (None, custom_id)
                for status, result, custom_id in rows]

    def complete(self, batch_id: str, worker: str, *, output_file_id: str | None,
                 error_file_id: str | None, usage: dict[str, Any] | None = None) -> bool:
        """Give a finalized batch its files, counts, usage and final status (its
        `outcome`)."""
        total, completed, failed = self.counts(batch_id)
        now = datetime.now(UTC)
        with Session(self._engine) as session:
            batch = session.get(StoredBatch, batch_id)
            if batch is None or batch.finalizer != worker:
                return False
            outcome = batch.outcome or "completed"
            batch.status = outcome
            setattr(batch, f"{outcome}_at", now)
            batch.output_file_id, batch.error_file_id = output_file_id, error_file_id
            batch.total, batch.completed, batch.failed = total, completed, failed
            batch.usage_json = None if usage is None else json.dumps(usage)
            session.add(batch)
            session.commit()
        return True

    def dispose(self) -> None:
        self._engine.dispose()

    def __repr__(self) -> str:  # never the URL: it may hold a password
        return f"BatchStore({self.dialect})"


@lru_cache(maxsize=4)
def open_batch_store(url: str) -> BatchStore:
    """The process's one BatchStore per URL."""
    return BatchStore(url)
