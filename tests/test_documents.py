"""The document store end to end: real embeddings, real Chroma (embedded and a server).

The corpus (tests/fixtures/corpus plus a PDF made here) is a fictional ISP's help pages and
staff handbook, with near-duplicates on purpose: hardware vs subscription refunds, account
password reset vs router factory reset, staff travel reimbursement vs customer refunds.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"  # the embedder must never reach a model hub

import pytest  # noqa: E402

from openchat.access.scopes import DOCUMENTS_SCOPE  # noqa: E402
from openchat.config import DocumentSettings  # noqa: E402
from tests.chroma_server import chroma_server  # noqa: E402
from tools.documents import CollectionNotFound, DocumentStore, document_id  # noqa: E402
from tools.embeddings import Embedder  # noqa: E402
from tools.readers import read_file, read_text  # noqa: E402
from tools.registry import Registry  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
CORPUS = ROOT / "tests" / "fixtures" / "corpus"
OPENCHAT = Path(sys.executable).parent / "openchat"
CHUNKING = {"chunk_size": 400, "chunk_overlap": 60}  # small, so documents span chunks

PRIVACY_NOTICE = [
    "Privacy notice: your personal data",
    "Lumen Fiber keeps the personal data needed to run your contract: name, address, contact "
    "details, payment details and connection logs.",
    "Connection logs are kept for 6 months; invoices for 10 years, as tax law requires.",
    "You may ask for a copy of your data or for its erasure at any time by writing to "
    "privacy@lumenfiber.example. We answer within 30 days and delete everything we are not "
    "legally obliged to keep.",
]

# Paraphrased questions (few words in common with the answer) -> the file that answers them.
QUESTIONS = [
    ("Can I get my money back for a modem I bought last week?", "refunds-hardware.md"),
    ("I cancelled my yearly plan halfway through, will I be reimbursed?",
     "refunds-subscriptions.md"),
    ("I can no longer sign in to my online account because I lost my credentials",
     "account-password-reset.md"),
    ("The box with the blinking lights is misbehaving; how do I wipe it back to defaults?",
     "router-factory-reset.txt"),
    ("How long until my parcel arrives?", "shipping.html"),
    ("How long is equipment guaranteed against defects?", "warranty.html"),
    ("Can I stop my children from visiting certain websites?", "parental-controls.md"),
    ("Am I allowed to bring my pet to work?", "office-dogs.txt"),
    ("How do I claim back what I spent on a hotel during a work trip?", "travel-expenses.md"),
    ("The internet has been dead in my neighbourhood since yesterday, do I get compensated?",
     "outage-credits.html"),
    ("How do I get you to erase everything you store about me?", "privacy-notice.pdf"),
]


def write_pdf(path: Path, paragraphs: list[str]) -> Path:
    from fpdf import FPDF

    pdf = FPDF()
    pdf.add_page()
    pdf.set_font("Helvetica", size=11)
    for paragraph in paragraphs:
        pdf.multi_cell(0, 6, paragraph)
        pdf.ln(4)
    pdf.output(str(path))
    return path


def fresh_name() -> str:
    return f"t-{uuid.uuid4().hex[:10]}"


@pytest.fixture(scope="session")
def embedder() -> Embedder:
    return Embedder()


@pytest.fixture(scope="session")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The fixture corpus plus the PDF, in a directory of its own."""
    directory = tmp_path_factory.mktemp("corpus") / "corpus"
    shutil.copytree(CORPUS, directory)
    write_pdf(directory / "privacy-notice.pdf", PRIVACY_NOTICE)
    return directory


@pytest.fixture(scope="session")
def chroma_url(tmp_path_factory: pytest.TempPathFactory):
    with chroma_server(tmp_path_factory.mktemp("chroma-server")) as url:
        yield url


@pytest.fixture(scope="session", params=["embedded", "server"])
def store(request: pytest.FixtureRequest, embedder: Embedder, corpus: Path,
          tmp_path_factory: pytest.TempPathFactory):
    """A store of each kind with the corpus ingested into the collection "corpus"."""
    if request.param == "server":
        settings = DocumentSettings(url=request.getfixturevalue("chroma_url"), **CHUNKING)
    else:
        settings = DocumentSettings(path=str(tmp_path_factory.mktemp("chroma")), **CHUNKING)
    store = DocumentStore(settings, embedder)
    results = [store.add_file(path, "corpus") for path in sorted(corpus.iterdir())]
    assert [r.status for r in results] == ["added"] * len(QUESTIONS)
    yield store
    store.close()


# -- retrieval ---------------------------------------------------------------------------

@pytest.mark.parametrize("question,expected", QUESTIONS, ids=[q[1] for q in QUESTIONS])
def test_paraphrased_question_finds_the_right_document_first(
        store: DocumentStore, question: str, expected: str) -> None:
    hits = store.search("corpus", question, top_k=3)
    ranking = [(Path(h.source).name, h.score) for h in hits]
    assert Path(hits[0].source).name == expected, ranking


def test_hits_carry_ids_sources_and_cosine_scores(store: DocumentStore, corpus: Path) -> None:
    hits = store.search("corpus", "refund for a router", top_k=5)
    assert len(hits) == 5
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    for hit in hits:
        assert -1 <= hit.score <= 1
        assert Path(hit.source).parent == corpus
        assert hit.document_id == document_id(hit.source)
        assert hit.id.startswith(f"{hit.document_id}:") and hit.text


def test_documents_span_several_chunks_with_the_configured_size(store: DocumentStore) -> None:
    documents = store.list_documents("corpus")
    assert len(documents) == len(QUESTIONS)
    assert any(d.chunks > 1 for d in documents)
    for hit in store.search("corpus", "refunds", top_k=10):
        assert len(hit.text) <= CHUNKING["chunk_size"]


# -- ingestion ---------------------------------------------------------------------------

def test_reingesting_the_same_file_changes_nothing(store: DocumentStore, corpus: Path) -> None:
    name = fresh_name()
    path = corpus / "refunds-hardware.md"
    first = store.add_file(path, name)
    again = store.add_file(path, name)
    from_elsewhere = store.add_file(Path(os.path.relpath(path)), name)  # same file
    assert first.status == "added" and first.chunks > 1
    assert again.status == from_elsewhere.status == "unchanged"
    assert again.document_id == first.document_id and again.chunks == first.chunks
    assert [d.chunks for d in store.list_documents(name)] == [first.chunks]
    # Other chunk settings cut the same text differently: it is re-ingested.
    recut = DocumentStore(store.settings.model_copy(update={"chunk_size": 200}), store.embedder)
    assert recut.add_file(path, name).status == "replaced"
    assert [d.chunks for d in store.list_documents(name)] == [recut.add_file(path, name).chunks]
    recut.close()


def test_changed_text_replaces_the_old_chunks(store: DocumentStore) -> None:
    name = fresh_name()
    old = "\n\n".join(f"Old paragraph {n} mentions the obsolete zebra tariff." * 3
                      for n in range(6))
    first = store.add_text(name, "tariffs", old)
    second = store.add_text(name, "tariffs", "New tariffs: one flat price of 30 euros.")
    assert (first.status, second.status) == ("added", "replaced")
    assert first.document_id == second.document_id and first.chunks > second.chunks == 1
    chunks = store.client.get_collection(name, embedding_function=None).get()
    assert chunks["ids"] == [f"{second.document_id}:0"]
    assert not any("zebra" in text for text in chunks["documents"])
    assert "flat price" in store.search(name, "how much does it cost", top_k=1)[0].text


def test_list_and_delete_documents(store: DocumentStore) -> None:
    name = fresh_name()
    a = store.add_text(name, "a.md", "# Alpha\n\nAbout alpacas.", format="markdown")
    b = store.add_text(name, "b.html", "<p>About <b>beavers</b>.</p>", format="html")
    assert name in store.collections()
    listed = store.list_documents(name)
    assert [(d.id, d.source, d.chunks) for d in listed] == [(a.document_id, "a.md", 1),
                                                            (b.document_id, "b.html", 1)]
    assert all(d.ingested_at.endswith("+00:00") for d in listed)
    assert store.delete_document(name, a.document_id) is True
    assert store.delete_document(name, a.document_id) is False
    assert store.delete_document("no-such-collection", a.document_id) is False
    assert [d.source for d in store.list_documents(name)] == ["b.html"]
    assert [h.source for h in store.search(name, "alpacas", top_k=5)] == ["b.html"]
    store.close()  # and the next call reconnects
    assert [d.source for d in store.list_documents(name)] == ["b.html"]


@pytest.mark.parametrize("name", ["ab", "-abc", "abc-", "has space", "x" * 513, "ünïcode",
                                  "a/b/c", ""])
def test_bad_collection_names_are_refused(store: DocumentStore, name: str) -> None:
    with pytest.raises(ValueError, match="invalid collection name"):
        store.add_text(name, "source", "some text")
    with pytest.raises(ValueError, match="invalid collection name"):
        store.search(name, "query", top_k=1)


def test_searching_a_missing_collection_is_a_clear_error(store: DocumentStore) -> None:
    with pytest.raises(CollectionNotFound, match="no document collection named 'nowhere'"):
        store.search("nowhere", "anything", top_k=3)
    assert "nowhere" not in store.collections()  # searching never creates one


def test_empty_and_unsupported_inputs_are_refused(store: DocumentStore, tmp_path: Path) -> None:
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "blank.md").write_text("  \n\n \n")
    (tmp_path / "scripts.html").write_text("<script>var a = 1;</script><nav>Home</nav>")
    (tmp_path / "report.docx").write_bytes(b"PK\x03\x04")
    for bad in ("empty.txt", "blank.md", "scripts.html"):
        with pytest.raises(ValueError, match="no text"):
            store.add_file(tmp_path / bad, "corpus")
    with pytest.raises(ValueError, match="unsupported file type '.docx'"):
        store.add_file(tmp_path / "report.docx", "corpus")
    with pytest.raises(FileNotFoundError):
        store.add_file(tmp_path / "missing.md", "corpus")
    with pytest.raises(ValueError, match="no text"):
        store.add_text("corpus", "blank", " \n ")
    with pytest.raises(ValueError, match="empty"):
        store.search("corpus", "  ", top_k=3)


def test_an_unreachable_server_fails_at_construction(embedder: Embedder) -> None:
    with pytest.raises(ValueError, match="Could not connect to a Chroma server"):
        DocumentStore(DocumentSettings(url="http://127.0.0.1:9"), embedder)
    with pytest.raises(ValueError, match="documents.url must be http"):
        DocumentStore(DocumentSettings(url="ftp://chroma"), embedder)


# -- readers -----------------------------------------------------------------------------

def test_html_reader_keeps_paragraphs_and_drops_scripts_styles_navigation() -> None:
    text = read_file(CORPUS / "shipping.html")
    paragraphs = text.split("\n\n")
    assert paragraphs[0] == "Shipping and delivery"  # the title, not repeated by the <h1>
    assert paragraphs[1].startswith("Orders placed before 2 pm")
    assert "We deliver to the EU, Norway and Switzerland." in paragraphs
    for hidden in ("analytics", "font-family", "Refunds |", "Help"):
        assert hidden not in text


def test_html_title_is_kept_and_breaks_become_spaces() -> None:
    text = read_text("<title>Page</title><p>one<br>two</p><div>three</div>", "html")
    assert text == "Page\n\none two\n\nthree"


def test_markdown_and_text_readers_tidy_whitespace_only() -> None:
    text = read_file(CORPUS / "refunds-hardware.md")
    assert text.startswith("# Refund policy for hardware\n\nThis policy covers")
    assert read_text("a  \r\nb\n\n\n\nc\n", "markdown") == "a\nb\n\nc"
    with pytest.raises(ValueError, match="unknown text format"):
        read_text("x", "docx")


def test_pdf_reader_returns_the_page_text(tmp_path: Path) -> None:
    path = write_pdf(tmp_path / "notice.pdf", PRIVACY_NOTICE)
    text = read_file(path)
    assert text.startswith("Privacy notice: your personal data")
    assert "privacy@lumenfiber.example" in text
    (tmp_path / "broken.pdf").write_bytes(b"%PDF-1.4 not really")
    with pytest.raises(ValueError):
        read_file(tmp_path / "broken.pdf")


# -- embeddings --------------------------------------------------------------------------

def test_embedder_gives_normalised_384_dimension_vectors(embedder: Embedder) -> None:
    vectors = embedder.embed(["reset my password", "I forgot my login", "dogs at the office"])
    assert embedder.dimensions == 384 and embedder.max_tokens == 256
    assert [len(v) for v in vectors] == [384] * 3
    assert all(abs(sum(x * x for x in v) - 1) < 1e-4 for v in vectors)
    similarity = [sum(a * b for a, b in zip(vectors[0], v)) for v in vectors[1:]]
    assert similarity[0] > similarity[1] + 0.2
    assert embedder.embed([]) == [] and embedder.count_tokens([]) == 0
    assert embedder.token_counts([]) == []


def test_embedder_counts_tokens(embedder: Embedder) -> None:
    assert embedder.token_counts(["hello world", "hello"]) == [4, 3]  # [CLS] ... [SEP]
    assert embedder.count_tokens(["hello world", "hello"]) == 7
    assert embedder.token_counts(["word " * 1000]) == [1002]  # not cut: callers can refuse
    assert embedder.count_tokens(["word " * 1000]) == embedder.max_tokens  # what it reads
    with pytest.raises(TypeError):
        embedder.embed("not a list")  # type: ignore[arg-type]


# -- the model's tool --------------------------------------------------------------------

def test_search_documents_tool_through_the_registry(store: DocumentStore) -> None:
    registry = Registry()
    for item in store.tools():
        registry.add(item)
    search = registry.get("search_documents")
    assert search is not None and search.scope == DOCUMENTS_SCOPE
    schema = search.parameters
    assert schema["required"] == ["query"]
    assert schema["properties"]["top_k"]["maximum"] == store.settings.max_top_k
    assert "score" in search.description and "source" in search.description

    def run(arguments: dict) -> tuple[bool, dict]:
        result = asyncio.run(registry.run("search_documents", arguments, timeout=30,
                                          max_bytes=8192))
        return result.ok, json.loads(result.output)

    ok, output = run({"query": "what if I forgot my password", "collection": "corpus",
                      "top_k": 2})
    assert ok and len(output["results"]) == 2
    best = output["results"][0]
    assert set(best) == {"id", "document_id", "source", "text", "score"}
    assert best["source"].endswith("account-password-reset.md") and best["score"] > 0.3

    ok, output = run({"query": "anything", "collection": "missing-one"})
    assert not ok and "no document collection named 'missing-one'" in output["error"]
    assert "corpus" in output["error"]  # tells the model which collections exist
    ok, output = run({"query": "anything", "top_k": 999})
    assert not ok and "top_k" in output["error"]


# -- command line ------------------------------------------------------------------------

def run_cli(*args: str, data: Path, config: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OPENCHAT_CONFIG": str(config),
           "OPENCHAT_DOCUMENTS__PATH": str(data)}
    return subprocess.run([str(OPENCHAT), *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=120)


@pytest.fixture
def cli_config(tmp_path: Path) -> Path:
    # Only the documents section: defaults elsewhere, whatever configuration.yaml holds.
    config = tmp_path / "config.yaml"
    config.write_text("documents:\n  default_collection: handbook\n  chunk_size: 400\n"
                      "  chunk_overlap: 60\n")
    return config


def test_cli_ingests_a_directory_into_a_searchable_collection(
        corpus: Path, embedder: Embedder, tmp_path: Path, cli_config: Path) -> None:
    data = tmp_path / "chroma"
    done = run_cli("ingest", str(corpus), "--collection", "cli-docs", data=data,
                   config=cli_config)
    assert done.returncode == 0, done.stderr
    assert f"added: {len(QUESTIONS)}" in done.stdout
    assert "in collection 'cli-docs'" in done.stdout
    store = DocumentStore(DocumentSettings(path=str(data), **CHUNKING), embedder)
    assert len(store.list_documents("cli-docs")) == len(QUESTIONS)
    best = store.search("cli-docs", "Am I allowed to bring my pet to work?", top_k=1)[0]
    assert best.source == str(corpus / "office-dogs.txt")
    store.close()


def test_cli_reports_bad_files_and_ingests_the_rest(tmp_path: Path, embedder: Embedder,
                                                    cli_config: Path) -> None:
    folder = tmp_path / "mixed"
    folder.mkdir()
    shutil.copy(CORPUS / "office-dogs.txt", folder)
    (folder / "empty.md").write_text("")
    (folder / "notes.docx").write_text("skipped: not a supported suffix")
    data = tmp_path / "chroma"
    done = run_cli("ingest", str(folder), str(tmp_path / "missing.txt"), data=data,
                   config=cli_config)
    assert done.returncode == 1
    assert "added: 1" in done.stdout and "'handbook'" in done.stdout  # default collection
    assert "empty.md: ValueError" in done.stderr
    assert "missing.txt: no such file" in done.stderr and "notes.docx" not in done.stderr
    store = DocumentStore(DocumentSettings(path=str(data)), embedder)
    assert [Path(d.source).name for d in store.list_documents("handbook")] == ["office-dogs.txt"]
    store.close()


def test_cli_refuses_a_bad_collection_name(tmp_path: Path, cli_config: Path) -> None:
    done = run_cli("ingest", str(CORPUS), "--collection", "x", data=tmp_path, config=cli_config)
    assert done.returncode == 1 and "invalid collection name 'x'" in done.stderr


def test_one_input_of_token_ids_counts_as_one_input_however_long():
    from openchat.api.embeddings import _texts
    from openchat.protocol.requests import EmbeddingRequest

    ids = [15339, 1917] * 150  # 300 ids: one input, not 300
    (text,) = _texts(EmbeddingRequest(model="m", input=ids), max_inputs=256)
    assert text.startswith("hello world")
