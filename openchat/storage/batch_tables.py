"""The SQL tables of the batch store (storage/batches.py): a batch, and each of its lines
with its claim and result. Their own MetaData, apart from keys, responses and files."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.orm import registry
from sqlmodel import Field, SQLModel

from openchat.databases import UTCDateTime

ACTIVE = ("validating", "in_progress", "cancelling", "finalizing")
EXPIRY = timedelta(hours=24)  # completion_window "24h", the one OpenAI offers
_TIMESTAMPS = ("in_progress_at", "expires_at", "finalizing_at", "completed_at",
               "failed_at", "expired_at", "cancelling_at", "cancelled_at")


class BatchesModel(SQLModel, registry=registry()):
    """Base of the batch tables: their own MetaData, apart from keys, responses, files."""


class StoredBatch(BatchesModel, table=True):
    __tablename__ = "batches"

    id: str = Field(primary_key=True, max_length=64)
    owner: str | None = Field(None, index=True, max_length=64, description="The key's id.")
    scopes: str | None = Field(None, description="The creating key's scopes, as JSON (None "
                               "with authentication off): what its lines may use.")
    endpoint: str = Field(max_length=64)
    model: str | None = Field(None, max_length=256, description="Its first line's model.")
    input_file_id: str = Field(max_length=64)
    completion_window: str = Field(max_length=8)
    status: str = Field(index=True, max_length=16)
    outcome: str | None = Field(None, max_length=16, description="The status the batch "
                                "ends in once finalized.")
    finalizer: str | None = Field(None, max_length=64, description="The runner finalizing it.")
    metadata_json: str | None = None
    errors_json: str | None = None
    output_file_id: str | None = Field(None, max_length=64)
    error_file_id: str | None = Field(None, max_length=64)
    total: int = 0
    completed: int = 0
    failed: int = 0
    usage_json: str | None = Field(None, description="OpenAI's batch usage once it ended.")
    output_expires_s: int | None = Field(None, description="Its output and error files "
                                         "expire this long after they are written.")
    created_at: datetime = Field(sa_type=UTCDateTime)
    in_progress_at: datetime | None = Field(None, sa_type=UTCDateTime)
    expires_at: datetime | None = Field(None, sa_type=UTCDateTime)
    finalizing_at: datetime | None = Field(None, sa_type=UTCDateTime)
    completed_at: datetime | None = Field(None, sa_type=UTCDateTime)
    failed_at: datetime | None = Field(None, sa_type=UTCDateTime)
    expired_at: datetime | None = Field(None, sa_type=UTCDateTime)
    cancelling_at: datetime | None = Field(None, sa_type=UTCDateTime)
    cancelled_at: datetime | None = Field(None, sa_type=UTCDateTime)

    @property
    def scope_list(self) -> list[str] | None:
        return None if self.scopes is None else json.loads(self.scopes)

    def as_object(self, counts: tuple[int, int, int] | None = None) -> dict[str, Any]:
        """OpenAI's Batch; `counts` (total, completed, failed) while the batch runs."""
        total, completed, failed = counts or (self.total, self.completed, self.failed)
        stamps = {name: _epoch(getattr(self, name)) for name in _TIMESTAMPS}
        return {"id": self.id, "object": "batch", "endpoint": self.endpoint,
                "errors": None if self.errors_json is None else json.loads(self.errors_json),
                "input_file_id": self.input_file_id,
                "completion_window": self.completion_window, "status": self.status,
                "output_file_id": self.output_file_id, "error_file_id": self.error_file_id,
                "created_at": _epoch(self.created_at), **stamps,
                "request_counts": {"total": total, "completed": completed, "failed": failed},
                "metadata": None if self.metadata_json is None
                else json.loads(self.metadata_json), "model": self.model,
                "usage": None if self.usage_json is None else json.loads(self.usage_json)}


class BatchLine(BatchesModel, table=True):
    __tablename__ = "batch_lines"

    batch_id: str = Field(primary_key=True, max_length=64)
    number: int = Field(primary_key=True, description="Its line in the input file, from 1.")
    custom_id: str = Field(max_length=512)
    url: str = Field(max_length=64)
    body: str
    state: str = Field("pending", index=True, max_length=16,
                       description="pending, running, done or dropped (cancelled, expired).")
    attempt: int = Field(0, description="Raised by every claim: the compare-and-set token.")
    claimed_by: str | None = Field(None, index=True, max_length=64)
    claimed_at: datetime | None = Field(None, sa_type=UTCDateTime)
    status_code: int | None = None
    result: str | None = Field(None, description="Its output line, as JSON.")


def _epoch(moment: datetime | None) -> int | None:
    return None if moment is None else int(moment.timestamp())
