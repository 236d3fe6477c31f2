"""Cut a document's text into chunks small enough to embed and to show the model.

Paragraphs are packed whole while they fit; a paragraph longer than a chunk is cut at
sentence ends, a sentence longer than a chunk at spaces, and a word longer than a chunk
anywhere. Each chunk after the first starts with up to `overlap` characters from the end of
the previous one (whole words), so a fact split across a boundary stays findable.
"""

from __future__ import annotations

import re
from typing import NamedTuple

_PARAGRAPH_BREAK = re.compile(r"\n\s*\n")
_SENTENCE_END = re.compile(r"(?<=[.!?…])\s+")
_PARAGRAPH = "\n\n"


class _Piece(NamedTuple):
    text: str
    joiner: str  # what separates it from the piece before it in the same chunk


def chunk_text(text: str, size: int, overlap: int = 0) -> list[str]:
    """Chunks of at most `size` characters, in order, none empty; deterministic."""
    if size < 1:
        raise ValueError(f"chunk size must be at least 1, got {size}")
    if not 0 <= overlap < size:
        raise ValueError(f"overlap must be in [0, size), got {overlap} for size {size}")
    chunks: list[str] = []
    current = ""
    for piece in _pieces(text, size):
        if not current:
            current = piece.text
        elif len(current) + len(piece.joiner) + len(piece.text) <= size:
            current += piece.joiner + piece.text
        else:
            chunks.append(current)
            current = _carry(current, overlap, size - len(piece.joiner) - len(piece.text))
            current = current + piece.joiner + piece.text if current else piece.text
    if current:
        chunks.append(current)
    return chunks


def _pieces(text: str, size: int) -> list[_Piece]:
    """The text as pieces of at most `size` characters, each with its joiner."""
    pieces: list[_Piece] = []
    for paragraph in _PARAGRAPH_BREAK.split(text.replace("\r\n", "\n")):
        paragraph = paragraph.strip()
        if not paragraph:
            continue
        if len(paragraph) <= size:
            parts = [paragraph]
        else:
            parts = [p for s in _SENTENCE_END.split(paragraph) for p in _split_sentence(s, size)]
        pieces.append(_Piece(parts[0], _PARAGRAPH))
        pieces.extend(_Piece(part, " ") for part in parts[1:])
    return pieces


def _split_sentence(sentence: str, size: int) -> list[str]:
    """A sentence that is too long, as runs of words; a too-long word as slices."""
    if len(sentence) <= size:
        return [sentence]
    parts: list[str] = []
    for word in sentence.split():
        if len(word) > size:
            parts.extend(word[i: i + size] for i in range(0, len(word), size))
        else:
            parts.append(word)
    return parts


def _carry(chunk: str, overlap: int, room: int) -> str:
    """The end of `chunk` to repeat in the next one: at most `overlap` and `room`
    characters, starting at a word boundary ("" when no whole word fits)."""
    limit = min(overlap, room)
    if limit <= 0:
        return ""
    if len(chunk) <= limit:
        return chunk
    tail = chunk[-limit:]
    if not chunk[-limit - 1].isspace():
        # Started mid-word: drop the fragment up to the first whitespace.
        cut = re.search(r"\s", tail)
        tail = tail[cut.end():] if cut else ""
    return tail.strip()
