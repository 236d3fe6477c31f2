"""chunk_text: paragraph packing, long-paragraph splitting, overlap, bounds."""

from __future__ import annotations

import re

import pytest

from tools.chunking import chunk_text

SENTENCES = " ".join(f"Sentence number {n} talks about topic {n % 7}." for n in range(60))


def words(text: str) -> list[str]:
    return text.split()


def test_short_text_is_one_chunk() -> None:
    assert chunk_text("  Hello world.  ", 100) == ["Hello world."]


def test_empty_and_blank_text_give_no_chunks() -> None:
    assert chunk_text("", 100) == []
    assert chunk_text(" \n\n \t\n", 100) == []


def test_paragraphs_are_packed_whole_while_they_fit() -> None:
    paragraphs = ["A" * 30, "B" * 30, "C" * 30, "D" * 30]
    chunks = chunk_text("\n\n".join(paragraphs), 70)
    assert chunks == ["A" * 30 + "\n\n" + "B" * 30, "C" * 30 + "\n\n" + "D" * 30]


def test_blank_lines_with_spaces_and_crlf_separate_paragraphs() -> None:
    chunks = chunk_text("one\r\n \r\ntwo\n\t\nthree", 5)
    assert chunks == ["one", "two", "three"]


def test_single_newlines_inside_a_paragraph_are_kept() -> None:
    text = "- first item\n- second item"
    assert chunk_text(text, 100) == [text]


@pytest.mark.parametrize("size,overlap", [(50, 0), (120, 30), (200, 199), (37, 10), (1000, 150)])
def test_every_chunk_fits_and_nothing_is_lost(size: int, overlap: int) -> None:
    text = "Title line\n\n" + SENTENCES + "\n\nShort closing paragraph."
    chunks = chunk_text(text, size, overlap)
    assert chunks and all(0 < len(c) <= size for c in chunks)
    assert all(c == c.strip() for c in chunks)
    # Without the carried-over overlap, the chunks are the text's words in order.
    if overlap == 0:
        assert words(" ".join(chunks)) == words(text)
    else:
        assert set(words(text)) == set(words(" ".join(chunks)))


def test_long_paragraph_is_cut_at_sentence_ends() -> None:
    chunks = chunk_text(SENTENCES, 200)
    assert len(chunks) > 1
    assert all(c.endswith(".") for c in chunks)
    assert all(re.match(r"Sentence number \d+", c) for c in chunks)


def test_overlong_sentence_is_cut_at_spaces() -> None:
    sentence = " ".join(f"word{n}" for n in range(100))
    chunks = chunk_text(sentence, 60)
    assert all(len(c) <= 60 for c in chunks)
    assert words(" ".join(chunks)) == words(sentence)  # no word is broken


def test_overlong_word_is_sliced() -> None:
    chunks = chunk_text("x" * 250, 100)
    assert chunks == ["x" * 100, "x" * 100, "x" * 50]


def carried(previous: str, current: str) -> str:
    """The longest run of whole words that ends `previous` and starts `current`."""
    return max((current[:k] for k in range(1, len(current))
                if current[k].isspace() and previous.endswith(current[:k])
                and (k == len(previous) or previous[-k - 1].isspace())), key=len, default="")


def test_overlap_repeats_whole_words_from_the_previous_chunk() -> None:
    chunks = chunk_text(SENTENCES, 200, overlap=40)
    assert len(chunks) > 2
    tails = [carried(previous, current) for previous, current in zip(chunks, chunks[1:])]
    assert all(0 < len(tail) <= 40 for tail in tails)
    # Apart from the carried words, the chunks are the text in order.
    rest = [chunks[0]] + [c[len(t):] for c, t in zip(chunks[1:], tails)]
    assert words(" ".join(rest)) == words(SENTENCES)


def test_overlap_never_pushes_a_chunk_over_size() -> None:
    paragraphs = ["p" * 90, "q" * 95, "r" * 99]
    chunks = chunk_text("\n\n".join(paragraphs), 100, overlap=50)
    assert chunks == paragraphs  # no room to carry anything


def test_overlap_carries_across_paragraphs() -> None:
    text = "alpha beta gamma delta\n\nepsilon zeta eta theta"
    chunks = chunk_text(text, 40, overlap=12)
    assert chunks == ["alpha beta gamma delta", "gamma delta\n\nepsilon zeta eta theta"]


def test_chunking_is_deterministic() -> None:
    text = "Intro\n\n" + SENTENCES * 3
    assert chunk_text(text, 300, 50) == chunk_text(text, 300, 50)


@pytest.mark.parametrize("size,overlap", [(0, 0), (-5, 0), (100, 100), (100, -1)])
def test_bad_parameters_are_refused(size: int, overlap: int) -> None:
    with pytest.raises(ValueError):
        chunk_text("text", size, overlap)
