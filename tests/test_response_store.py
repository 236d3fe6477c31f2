"""The Responses API's store on SQLite and on a real PostgreSQL server: ownership,
retention by age and per key, and OpenAI's paging of input items."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlmodel import Session

from openchat.storage.responses import ResponseStore, StoredResponse, page
from tests.postgres import store_url


@pytest.fixture(params=["sqlite", "postgresql"])
def responses_url(request, tmp_path):
    yield from store_url(request, tmp_path, "responses.db", "responses")


def response(n: int) -> dict:
    return {"id": f"resp_{n}", "object": "response", "output": [{"id": f"msg_{n}"}]}


def save(store: ResponseStore, n: int, owner: str | None = "key1") -> None:
    store.save(response(n), [{"id": f"in_{n}"}], [{"id": f"in_{n}"}, {"id": f"msg_{n}"}],
               owner)


def test_saved_response_round_trips_for_its_owner_only(responses_url):
    store = ResponseStore(responses_url)
    save(store, 1)
    found = store.get("resp_1", "key1")
    assert found is not None and found.as_object() == response(1)
    assert found.input_item_list() == [{"id": "in_1"}]
    assert found.conversation_items() == [{"id": "in_1"}, {"id": "msg_1"}]
    assert store.get("resp_1", "key2") is None
    assert store.delete("resp_1", "key2") is False
    assert store.get("resp_1", "key1") is not None
    assert store.delete("resp_1", "key1") is True
    assert store.get("resp_1", "key1") is None
    store.dispose()


def test_without_auth_the_owner_is_none_and_everything_is_visible(responses_url):
    store = ResponseStore(responses_url)
    save(store, 1, owner=None)
    assert store.get("resp_1", None) is not None
    store.dispose()


def test_responses_past_their_age_are_gone(responses_url):
    store = ResponseStore(responses_url, max_age_days=1)
    save(store, 1)
    with Session(store._engine) as session:  # make it two days old
        row = session.get(StoredResponse, "resp_1")
        row.created_at = datetime.now(UTC) - timedelta(days=2)
        session.add(row)
        session.commit()
    assert store.get("resp_1", "key1") is None  # hidden at once
    save(store, 2)  # and removed when the next one is stored
    with Session(store._engine) as session:
        assert session.get(StoredResponse, "resp_1") is None
    store.dispose()


def test_each_key_keeps_at_most_its_cap_newest_first(responses_url):
    store = ResponseStore(responses_url, max_per_key=2)
    for n in range(4):
        save(store, n, owner="key1")
    save(store, 9, owner="key2")
    kept = [n for n in range(4) if store.get(f"resp_{n}", "key1") is not None]
    assert kept == [2, 3]
    assert store.get("resp_9", "key2") is not None  # another key's cap is its own
    store.dispose()


def test_page_follows_openais_cursors():
    items = [{"id": f"i{n}"} for n in range(5)]
    first = page(items, limit=2, order="asc")
    assert [i["id"] for i in first["data"]] == ["i0", "i1"] and first["has_more"] is True
    assert first["first_id"] == "i0" and first["last_id"] == "i1"
    second = page(items, limit=2, order="asc", after=first["last_id"])
    assert [i["id"] for i in second["data"]] == ["i2", "i3"] and second["has_more"]
    newest = page(items, limit=10, order="desc")
    assert [i["id"] for i in newest["data"]] == ["i4", "i3", "i2", "i1", "i0"]
    assert newest["has_more"] is False
    before = page(items, limit=10, order="desc", before="i1")
    assert [i["id"] for i in before["data"]] == ["i4", "i3", "i2"]
    assert page([], limit=3, order="desc") == {"object": "list", "data": [],
                                               "first_id": None, "last_id": None,
                                               "has_more": False}
