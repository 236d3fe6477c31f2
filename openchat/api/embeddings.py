"""POST /v1/embeddings in OpenAI's shape, backed by the same all-MiniLM-L6-v2 model that
indexes the document store (tools/embeddings.py), so client-side vectors and Chroma's
agree.

The openai client asks for `encoding_format="base64"` unless told otherwise and decodes
little-endian float32, so both encodings are served.
"""

from __future__ import annotations

import asyncio
import base64
from typing import Any

import numpy as np

from openchat.protocol.errors import APIError, invalid_param, model_not_found
from openchat.protocol.requests import EmbeddingRequest
from openchat.telemetry import usage


def _texts(request: EmbeddingRequest, max_inputs: int) -> list[str]:
    texts = [request.input] if isinstance(request.input, str) else request.input
    if not texts:
        raise invalid_param("input", "input must not be empty.")
    if not all(isinstance(t, str) for t in texts):
        raise invalid_param("input", "Token-id input is not supported: this model has its "
                            "own tokenizer; send text.", code="unsupported_input")
    if len(texts) > max_inputs:
        raise invalid_param("input", f"At most {max_inputs} inputs are allowed per request.")
    for i, text in enumerate(texts):
        if not text.strip():
            raise invalid_param(f"input[{i}]" if len(texts) > 1 else "input",
                                "input must not be an empty string.")
    return texts


async def create_embeddings(embedder, settings, request: EmbeddingRequest) -> dict[str, Any]:
    if request.model != settings.model_id:
        raise model_not_found(request.model)
    if request.dimensions is not None and request.dimensions != embedder.dimensions:
        raise invalid_param("dimensions", f"{settings.model_id} has {embedder.dimensions} "
                            "dimensions and cannot shorten them.")
    texts = _texts(request, settings.max_inputs)
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
