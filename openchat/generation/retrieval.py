"""Answers from the document store with citations (the typed `ask` API).

Retrieval runs first, unconditionally: the top chunks are numbered into the system block
and the model is asked to answer from them and cite them as [n]. The citations returned
are the retrieved chunks in that numbering, each marked `cited` when the answer refers
to it, so a caller can show sources even when the model cites none.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable

from openai.types.chat import ChatCompletion
from pydantic import BaseModel

from openchat.protocol.errors import APIError
from openchat.protocol.requests import ChatCompletionRequest
from tools.documents import DocumentStore, Hit

INSTRUCTION = (
    "Answer the user's question using only the numbered sources below. Cite the sources "
    "you use as [1], [2], ... If the sources do not contain the answer, say so."
)


class Citation(BaseModel):
    number: int
    id: str
    document_id: str
    source: str
    text: str
    score: float
    cited: bool


class AskResult(BaseModel):
    answer: str
    finish_reason: str
    citations: list[Citation]
    model: str
    usage: dict[str, int]


def sources_block(hits: list[Hit]) -> str:
    parts = [INSTRUCTION]
    for number, hit in enumerate(hits, start=1):
        parts.append(f"[{number}] ({hit.source})\n{hit.text}")
    return "\n\n".join(parts)


def check_top_k(documents: DocumentStore, top_k: int) -> None:
    limit = documents.settings.max_top_k
    if top_k > limit:
        raise APIError(f"top_k must be at most {limit}.", param="top_k", code="invalid_value")


def cited_numbers(answer: str) -> set[int]:
    return {int(n) for n in re.findall(r"\[(\d{1,3})\]", answer)}


async def ask(chat: Callable[[ChatCompletionRequest], Awaitable[ChatCompletion]],
              documents: DocumentStore, question: str, collection: str, top_k: int, *,
              model: str, max_tokens: int | None = None,
              seed: int | None = None) -> AskResult:
    """Retrieve, then answer with `chat` (a whole, non-streamed chat completion)."""
    check_top_k(documents, top_k)
    try:
        hits = await asyncio.to_thread(documents.search, collection, question, top_k)
    except LookupError as exc:
        raise APIError(str(exc), status=404, param="collection", code="not_found") from None
    except ValueError as exc:
        raise APIError(str(exc), param="collection") from None
    request = ChatCompletionRequest(
        model=model, max_tokens=max_tokens, seed=seed,
        messages=[{"role": "system", "content": sources_block(hits)},
                  {"role": "user", "content": question}],
    )
    completion = await chat(request)
    choice = completion.choices[0]
    text = choice.message.content or ""
    cited = cited_numbers(text)
    citations = [
        Citation(number=n, id=h.id, document_id=h.document_id, source=h.source, text=h.text,
                 score=h.score, cited=n in cited)
        for n, h in enumerate(hits, start=1)
    ]
    return AskResult(answer=text, finish_reason=choice.finish_reason, citations=citations,
                     model=completion.model, usage=completion.usage.model_dump(
                         include={"prompt_tokens", "completion_tokens", "total_tokens"}))
