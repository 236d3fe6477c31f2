"""Stored responses for the Responses API: `store: true` keeps each response, its input
items and the conversation it ends, so it can be retrieved, deleted, listed from and
continued with `previous_response_id`, on any replica sharing the database.

A response belongs to the API key that made it (`owner`): every lookup filters on it, so
another key's response is simply not found (404). With authentication off the owner is
None and every response is visible. Retention: responses older than `max_age_days` are
removed as new ones are stored, and so are a key's oldest beyond `max_per_key`.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import Any, Literal

from sqlalchemy.orm import registry
from sqlmodel import Field, Session, SQLModel, col, delete, select

from openchat.databases import UTCDateTime, create_tables, open_engine


class ResponsesModel(SQLModel, registry=registry()):
    """Base of the response tables: their own MetaData, apart from keys and SQL tools."""


class StoredResponse(ResponsesModel, table=True):
    __tablename__ = "responses"

    id: str = Field(primary_key=True, max_length=64)
    owner: str | None = Field(None, index=True, max_length=64, description="The key's id.")
    created_at: datetime = Field(sa_type=UTCDateTime, index=True)
    response: str = Field(description="The Response object, as JSON.")
    input_items: str = Field(description="This request's input items, as JSON.")
    conversation: str = Field(description="Every item up to this response's output, as "
                              "JSON: what `previous_response_id` continues.")

    def as_object(self) -> dict[str, Any]:
        return json.loads(self.response)

    def conversation_items(self) -> list[dict[str, Any]]:
        return json.loads(self.conversation)

    def input_item_list(self) -> list[dict[str, Any]]:
        return json.loads(self.input_items)


class ResponseStore:
    def __init__(self, url: str, *, max_age_days: float | None = None,
                 max_per_key: int | None = None) -> None:
        self._engine = open_engine(url, "the response store")
        self.dialect = self._engine.dialect.name
        self.max_age = timedelta(days=max_age_days) if max_age_days else None
        self.max_per_key = max_per_key
        create_tables(self._engine, ResponsesModel.metadata)

    def save(self, response: dict[str, Any], input_items: list[dict[str, Any]],
             conversation: list[dict[str, Any]], owner: str | None) -> None:
        now = datetime.now(UTC)
        row = StoredResponse(id=response["id"], owner=owner, created_at=now,
                             response=json.dumps(response), input_items=json.dumps(input_items),
                             conversation=json.dumps(conversation))
        with Session(self._engine) as session:
            session.add(row)
            if self.max_age is not None:
                session.exec(delete(StoredResponse).where(
                    col(StoredResponse.created_at) < now - self.max_age))
            session.flush()
            if self.max_per_key is not None:
                self._trim(session, owner)
            session.commit()

    def _trim(self, session: Session, owner: str | None) -> None:
        """Remove the owner's oldest responses beyond the cap (the newest are kept)."""
        kept = (select(StoredResponse.id).where(StoredResponse.owner == owner)
                .order_by(col(StoredResponse.created_at).desc(), col(StoredResponse.id).desc())
                .limit(self.max_per_key))
        session.exec(delete(StoredResponse).where(
            StoredResponse.owner == owner, col(StoredResponse.id).not_in(kept)))

    def get(self, response_id: str, owner: str | None) -> StoredResponse | None:
        with Session(self._engine, expire_on_commit=False) as session:
            row = session.get(StoredResponse, response_id)
        if row is None or (owner is not None and row.owner != owner):
            return None
        if self.max_age is not None and row.created_at < datetime.now(UTC) - self.max_age:
            return None
        return row

    def delete(self, response_id: str, owner: str | None) -> bool:
        if self.get(response_id, owner) is None:
            return False
        with Session(self._engine) as session:
            session.exec(delete(StoredResponse).where(col(StoredResponse.id) == response_id))
            session.commit()
        return True

    def dispose(self) -> None:
        self._engine.dispose()

    def __repr__(self) -> str:  # never the URL: it may hold a password
        return f"ResponseStore({self.dialect})"


def page(items: list[dict[str, Any]], *, limit: int, order: Literal["asc", "desc"],
         after: str | None = None, before: str | None = None) -> dict[str, Any]:
    """OpenAI's list page over items with ids: `after`/`before` are item ids in `order`."""
    ordered = items if order == "asc" else list(reversed(items))
    ids = [item["id"] for item in ordered]
    start = ids.index(after) + 1 if after in ids else 0
    end = ids.index(before) if before in ids else len(ordered)
    window = ordered[start:end]
    data = window[:limit]
    return {"object": "list", "data": data,
            "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None,
            "has_more": len(window) > limit}


@lru_cache(maxsize=4)
def open_response_store(url: str, max_age_days: float | None = None,
                        max_per_key: int | None = None) -> ResponseStore:
    """The process's one ResponseStore per URL."""
    return ResponseStore(url, max_age_days=max_age_days, max_per_key=max_per_key)
