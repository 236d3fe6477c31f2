"""What one decode step's grammar mask costs, per way of handing a tool's parameters to
xgrammar (docs/benchmarks.md, issue 18).

The EngineCore fills a token bitmask for every constrained sequence at every step; on the
CPU backend that work shares a core with the forward pass, so a costlier grammar is a
slower answer. This times xgrammar directly (no engine, no server) on the model's own
tokenizer:

  * `json`: `compile_json_schema(any_whitespace=False, separators=(",", ":"))`, what vLLM
    compiles for `StructuredOutputsParams(json=...)` with `disable_any_whitespace`;
  * `tag_grammar`: a structural tag whose content is the EBNF text xgrammar prints for the
    same schema (`constraints.compact_json_format`), what the service sends for a named
    tool's arguments once the call's opening is in the prompt;
  * `ebnf`: that EBNF text through `compile_grammar`, to tell the tag from the text.

Each grammar is compiled twice (cold, then from the cache), then walked `--walks` times:
at each step the mask is filled (timed), and a random allowed token (half the time among
the first 50 allowed, so short words and closing tokens come up) is accepted until the
grammar ends. The walk is not the model's distribution: read the figures side by side.

Usage: .venv/bin/python load/grammar_mask.py [--model .models/openchat-dev] [--walks 15]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from importlib.metadata import version
from pathlib import Path

import numpy as np
import xgrammar as xgr
from transformers import AutoTokenizer

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from openchat.generation.constraints import compact_json_format  # noqa: E402
from workloads import WEATHER_TOOL  # noqa: E402


def compile_all(compiler: xgr.GrammarCompiler, parameters: dict) -> dict[str, callable]:
    text = json.dumps(parameters)
    tag = json.dumps({"type": "structural_tag", "format": compact_json_format(parameters)})
    return {
        "json": lambda: compiler.compile_json_schema(text, any_whitespace=False,
                                                     separators=(",", ":")),
        "tag_grammar": lambda: compiler.compile_structural_tag(tag),
        "ebnf": lambda: compiler.compile_grammar(compact_json_format(parameters)["grammar"]),
    }


def walk(grammar: xgr.CompiledGrammar, vocab_size: int, rng: random.Random,
         max_steps: int = 200) -> tuple[list[float], str]:
    """Mask times (seconds) of one random walk through `grammar`, and the text it wrote."""
    matcher = xgr.GrammarMatcher(grammar)
    bitmask = xgr.allocate_token_bitmask(1, vocab_size)
    times, ids = [], []
    for _ in range(max_steps):
        if matcher.is_terminated():
            break
        start = time.perf_counter()
        matcher.fill_next_token_bitmask(bitmask)
        times.append(time.perf_counter() - start)
        bits = np.unpackbits(bitmask[0].numpy().view(np.uint8), bitorder="little")
        allowed = np.flatnonzero(bits[:vocab_size])
        pool = allowed[:50] if rng.random() < 0.5 else allowed
        token = int(pool[rng.randrange(len(pool))])
        if not matcher.accept_token(token):
            break
        ids.append(token)
    return times, ids


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=".models/openchat-dev", help="relative to the repo root")
    p.add_argument("--walks", type=int, default=15)
    p.add_argument("--out", help="write the figures here as JSON")
    args = p.parse_args()

    tokenizer = AutoTokenizer.from_pretrained(ROOT / args.model)
    vocab_size = len(tokenizer)
    info = xgr.TokenizerInfo.from_huggingface(tokenizer, vocab_size=vocab_size)
    compiler = xgr.GrammarCompiler(info, max_threads=1, cache_enabled=True)
    parameters = WEATHER_TOOL["function"]["parameters"]
    results = {}
    print("| grammar | compile cold ms | cached ms | steps | mask p50 us | p90 us | mean us |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, make in compile_all(compiler, parameters).items():
        start = time.perf_counter()
        make()
        cold = time.perf_counter() - start
        start = time.perf_counter()
        grammar = make()
        cached = time.perf_counter() - start
        rng = random.Random(0)
        times = []
        for _ in range(args.walks):
            walk_times, ids = walk(grammar, vocab_size, rng)
            times += walk_times
        times.sort()
        row = {"compile_cold_ms": cold * 1e3, "compile_cached_ms": cached * 1e3,
               "steps": len(times), "mask_p50_us": times[len(times) // 2] * 1e6,
               "mask_p90_us": times[int(len(times) * 0.9)] * 1e6,
               "mask_mean_us": statistics.fmean(times) * 1e6,
               "example": tokenizer.decode(ids)}
        results[name] = row
        print(f"| {name} | {row['compile_cold_ms']:.0f} | {row['compile_cached_ms']:.2f} | "
              f"{row['steps']} | {row['mask_p50_us']:.0f} | {row['mask_p90_us']:.0f} | "
              f"{row['mask_mean_us']:.0f} |")
    for name, row in results.items():
        print(f"{name} example: {row['example']}")
    if args.out:
        Path(args.out).write_text(json.dumps(
            {"model": args.model, "walks": args.walks, "xgrammar": version("xgrammar"),
             "results": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
