"""OpenChat-3.5's prompt format, rendered to token ids exactly as the model authors do.

Reference (imoneoi/openchat, ochat/config): BOS; then the system text followed by
<|end_of_turn|> with no role prefix; then per message the role prefix
("GPT4 Correct User:" / "GPT4 Correct Assistant:"), the content and <|end_of_turn|>;
the prompt ends with the assistant prefix. Every piece is tokenized on its own with
sentencepiece, which gives each piece its own leading "▁": joining the text first and
tokenizing once gives different ids, so this module never does that.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Sequence

import sentencepiece

from openchat.vocabulary import (
    BOS_ID,
    END_OF_TURN_ID,
    SENTENCEPIECE_SIZE,
    SPECIAL_TOKENS,
    VOCAB_SIZE,
)

logger = logging.getLogger(__name__)


Role = Literal["system", "user", "assistant"]
ROLE_NAMES = {"user": "User", "assistant": "Assistant"}


@dataclass(frozen=True)
class Turn:
    """One message reduced to what the template needs."""

    role: Role
    content: str


class OpenChatTokenizer:
    """Mistral-7B-v0.1's sentencepiece model plus OpenChat's two added tokens."""

    def __init__(self, model_file: Path) -> None:
        self._sp = sentencepiece.SentencePieceProcessor(model_file=str(model_file))
        if self._sp.vocab_size() != SENTENCEPIECE_SIZE:
            raise ValueError(
                f"{model_file} has {self._sp.vocab_size()} pieces; OpenChat-3.5 needs "
                f"Mistral's {SENTENCEPIECE_SIZE}-piece tokenizer"
            )
        self.model_file = Path(model_file)

    vocab_size = VOCAB_SIZE

    def encode(self, text: str) -> list[int]:
        """Tokenize one piece of text, as ochat does for every prompt piece."""
        return self._sp.encode(text) if text else []

    def decode(self, token_ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        """Text of token ids; OpenChat's added tokens are dropped or spelled out."""
        pieces: list[str] = []
        run: list[int] = []
        for token_id in token_ids:
            if token_id in SPECIAL_TOKENS:
                pieces.append(self._sp.decode(run))
                run = []
                if not skip_special_tokens:
                    pieces.append(SPECIAL_TOKENS[token_id])
            else:
                run.append(token_id)
        pieces.append(self._sp.decode(run))
        return "".join(pieces)

    def is_valid_id(self, token_id: int) -> bool:
        return 0 <= token_id < VOCAB_SIZE


def find_tokenizer_model(source: str) -> Path:
    """Locate tokenizer.model for a checkpoint directory or a Hugging Face model id.

    OpenChat-3.5 ships Mistral-7B-v0.1's tokenizer.model unchanged; `mistral_common`
    carries a copy, used when the checkpoint (e.g. a safetensors-only one) has none.
    """
    local = Path(source).expanduser()
    if local.is_dir():
        candidate = local / "tokenizer.model"
        if candidate.is_file():
            return candidate
    elif not local.exists():
        try:
            from huggingface_hub import hf_hub_download

            return Path(hf_hub_download(source, "tokenizer.model"))
        except Exception as exc:  # offline, gated or absent: use the shipped copy
            logger.info("tokenizer.model not fetched for %s (%s)", source, exc)
    from openchat.devmodel import mistral_sentencepiece_model

    fallback = mistral_sentencepiece_model()
    logger.info("using Mistral-7B-v0.1's tokenizer.model from mistral_common: %s", fallback)
    return fallback


class PieceCache:
    """Token ids of recently tokenized prompt pieces (message contents, system blocks).

    A chat client sends the whole conversation again with every turn, so all but the
    newest message were tokenized for the previous turn already; with a long history that
    re-tokenizing was the largest cost of our own per request. Least recently used pieces
    go first once the cache holds `max_tokens` ids. The lists handed out are shared:
    callers must not change them.
    """

    def __init__(self, encode, max_tokens: int = 500_000) -> None:
        self._encode = encode
        self._pieces: OrderedDict[str, list[int]] = OrderedDict()
        self._tokens = 0
        self.max_tokens = max_tokens

    def __call__(self, text: str) -> list[int]:
        ids = self._pieces.get(text)
        if ids is not None:
            self._pieces.move_to_end(text)
            return ids
        ids = self._encode(text)
        if len(ids) <= self.max_tokens:
            self._pieces[text] = ids
            self._tokens += len(ids)
            while self._tokens > self.max_tokens:
                self._tokens -= len(self._pieces.popitem(last=False)[1])
        return ids


class OpenChatTemplate:
    """Renders conversations and raw prompts to token ids."""

    def __init__(self, tokenizer: OpenChatTokenizer) -> None:
        self.tokenizer = tokenizer
        self._prefix_cache: dict[tuple[str, str], list[int]] = {}
        self._encode_piece = PieceCache(tokenizer.encode)

    def role_prefix(self, condition: str, role: str) -> list[int]:
        """Token ids of e.g. "GPT4 Correct User:" (cached: they are on every request)."""
        key = (condition, role)
        ids = self._prefix_cache.get(key)
        if ids is None:
            ids = self.tokenizer.encode(f"{condition} {ROLE_NAMES[role]}:")
            self._prefix_cache[key] = ids
        return ids

    def render_chat(self, turns: Sequence[Turn], condition: str) -> list[int]:
        """Token ids for a conversation, ready for the assistant to answer.

        System turns are joined into the one system block OpenChat knows. When the last
        turn is the assistant's, it is left open so the model continues it.
        """
        encode = self._encode_piece
        ids = [BOS_ID]
        system = "\n\n".join(t.content for t in turns if t.role == "system")
        if system:
            ids += encode(system) + [END_OF_TURN_ID]

        dialogue = [t for t in turns if t.role != "system"]
        continue_last = bool(dialogue) and dialogue[-1].role == "assistant"
        for position, turn in enumerate(dialogue):
            ids += self.role_prefix(condition, turn.role) + encode(turn.content)
            if not (continue_last and position == len(dialogue) - 1):
                ids.append(END_OF_TURN_ID)
        if not continue_last:
            ids += self.role_prefix(condition, "assistant")
        return ids

    def render_text(self, prompt: str) -> list[int]:
        """Token ids for a raw completion prompt: BOS plus the text, no template."""
        return [BOS_ID, *self.tokenizer.encode(prompt)]
