"""Plain text out of the document formats we ingest: text, Markdown, HTML and PDF.

Markdown stays as written (its markup reads fine to both the embedder and the model); HTML
loses scripts, styles and navigation but keeps its paragraph breaks; a PDF is its pages'
text. Every reader returns text with paragraphs separated by one blank line.
"""

from __future__ import annotations

import io
import re
from pathlib import Path
from typing import Literal

Format = Literal["text", "markdown", "html"]

# Suffix -> reader format; "pdf" exists only for files (there is no PDF "text in memory").
SUFFIXES: dict[str, str] = {
    ".txt": "text", ".text": "text",
    ".md": "markdown", ".markdown": "markdown",
    ".html": "html", ".htm": "html",
    ".pdf": "pdf",
}
FORMATS = ("text", "markdown", "html")

# Elements whose text is not part of the document.
_DROPPED = ("script", "style", "nav", "noscript", "template", "head", "svg")
# Elements that end a paragraph (their text gets blank lines around it).
_BLOCKS = ("p", "div", "section", "article", "main", "header", "footer", "aside", "h1", "h2",
           "h3", "h4", "h5", "h6", "li", "ul", "ol", "dl", "dt", "dd", "table", "tr",
           "blockquote", "pre", "figure", "figcaption", "address", "hr", "form", "fieldset")


def read_file(path: str | Path) -> str:
    """The text of a supported file, chosen by its suffix (see SUFFIXES)."""
    path = Path(path)
    kind = SUFFIXES.get(path.suffix.lower())
    if kind is None:
        raise ValueError(f"unsupported file type {path.suffix or '(no suffix)'!r} for "
                         f"{path.name}; supported: {', '.join(sorted(SUFFIXES))}")
    if kind == "pdf":
        return _pdf(path)
    data = path.read_bytes()
    return read_text(_decode(data), kind)


def read_text(text: str, format: str = "text") -> str:
    """Text already in memory, as `format` ("text", "markdown" or "html")."""
    if format == "html":
        return _html(text)
    if format in ("text", "markdown"):
        return _tidy(text)
    raise ValueError(f"unknown text format {format!r}; use one of {', '.join(FORMATS)}")


def is_supported(path: str | Path) -> bool:
    return Path(path).suffix.lower() in SUFFIXES


def _decode(data: bytes) -> str:
    # Most files are UTF-8 (a BOM is dropped); anything else is read as Windows-1252
    # rather than refused, since a few odd characters do not hurt retrieval.
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        return data.decode("cp1252", errors="replace")


def _html(markup: str) -> str:
    from bs4 import BeautifulSoup

    soup = BeautifulSoup(markup, "html.parser")
    title = soup.title.get_text(" ", strip=True) if soup.title else ""
    for element in soup.find_all(_DROPPED):
        element.decompose()
    for br in soup.find_all("br"):
        br.replace_with("\n")
    for element in soup.find_all(_BLOCKS):
        element.insert_before("\n\n")
        element.insert_after("\n\n")
    paragraphs = [" ".join(block.split()) for block in re.split(r"\n\s*\n", soup.get_text())]
    body = "\n\n".join(p for p in paragraphs if p)
    # The title names the document; skip it when the page repeats it as its first heading.
    if title and not body.startswith(title):
        body = f"{title}\n\n{body}" if body else title
    return body


def read_pdf_bytes(data: bytes, name: str = "the document") -> str:
    """The text of a PDF received in memory (e.g. uploaded over HTTP)."""
    return _pdf(io.BytesIO(data), name)


def _pdf(source: Path | io.BytesIO, name: str | None = None) -> str:
    from pypdf import PdfReader
    from pypdf.errors import PdfReadError

    name = name or Path(source).name
    try:
        reader = PdfReader(source)
        if reader.is_encrypted and not reader.decrypt(""):
            raise ValueError(f"{name} is encrypted")
        pages = [page.extract_text() or "" for page in reader.pages]
    except PdfReadError as exc:
        raise ValueError(f"{name} is not a readable PDF: {exc}") from None
    return _tidy("\n\n".join(pages))


def _tidy(text: str) -> str:
    """Unix newlines, no trailing spaces, at most one blank line in a row."""
    lines = [line.rstrip() for line in text.replace("\r\n", "\n").replace("\r", "\n").split("\n")]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()
