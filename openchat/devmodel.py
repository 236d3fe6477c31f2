"""Build the small random-weight OpenChat checkpoint used by tests and offline development.

No model weights can be downloaded on the machines this project is built on, so the dev
model keeps everything that shapes the serving path (Mistral architecture, OpenChat's exact
vocabulary and tokenizer, `<|end_of_turn|>` as EOS, an 8192-token context) and shrinks the
rest to a few megabytes of seeded random weights. Its text is gibberish; its token counts,
stop handling and structure are real.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from openchat.vocabulary import (
    BOS_ID,
    END_OF_TURN,
    END_OF_TURN_ID,
    PAD,
    PAD_ID,
    VOCAB_SIZE,
)

CONTEXT_LENGTH = 8192


@dataclass(frozen=True)
class Shape:
    """The sizes of a Mistral-architecture model; everything else is OpenChat's."""

    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int


DEV_SHAPE = Shape(hidden=256, intermediate=512, layers=2, heads=8, kv_heads=2)
# OpenChat-3.5 (Mistral-7B): load/capacity.py builds it with fewer layers to measure the
# per-layer cost of the real model on this CPU.
OPENCHAT_7B_SHAPE = Shape(hidden=4096, intermediate=14336, layers=32, heads=32, kv_heads=8)


def mistral_sentencepiece_model() -> Path:
    """Mistral-7B-v0.1's tokenizer model, shipped inside the `mistral_common` package."""
    import mistral_common

    return Path(mistral_common.__file__).parent / "data" / "tokenizer.model.v1"


def build_dev_model(out_dir: Path, *, seed: int = 0, overwrite: bool = False,
                    shape: Shape = DEV_SHAPE) -> Path:
    """Write a loadable OpenChat-shaped checkpoint to `out_dir` and return the path."""
    import torch
    from transformers import LlamaTokenizer, MistralConfig, MistralForCausalLM

    out_dir = Path(out_dir)
    if (out_dir / "config.json").exists() and not overwrite:
        return out_dir
    out_dir.mkdir(parents=True, exist_ok=True)

    shutil.copyfile(mistral_sentencepiece_model(), out_dir / "tokenizer.model")
    tokenizer = LlamaTokenizer.from_pretrained(out_dir, legacy=True, add_bos_token=True)
    tokenizer.add_special_tokens({"additional_special_tokens": [END_OF_TURN, PAD]})
    tokenizer.eos_token = END_OF_TURN
    tokenizer.pad_token = PAD
    assert tokenizer.convert_tokens_to_ids(END_OF_TURN) == END_OF_TURN_ID
    tokenizer.save_pretrained(out_dir)

    config = MistralConfig(
        vocab_size=VOCAB_SIZE,
        hidden_size=shape.hidden,
        intermediate_size=shape.intermediate,
        num_hidden_layers=shape.layers,
        num_attention_heads=shape.heads,
        num_key_value_heads=shape.kv_heads,
        max_position_embeddings=CONTEXT_LENGTH,
        sliding_window=None,
        rope_theta=10000.0,
        bos_token_id=BOS_ID,
        eos_token_id=END_OF_TURN_ID,
        pad_token_id=PAD_ID,
        tie_word_embeddings=False,
        torch_dtype="bfloat16",
    )
    torch.manual_seed(seed)
    model = MistralForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(out_dir, safe_serialization=True)
    (out_dir / "generation_config.json").write_text(
        json.dumps({"bos_token_id": BOS_ID, "eos_token_id": END_OF_TURN_ID}, indent=2) + "\n"
    )
    return out_dir
