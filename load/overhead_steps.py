"""The service's own per-request steps, timed in-process without an engine or HTTP.

load/overhead.py measures a whole request in the running worker; this times the steps of
ours inside it (request validation, prompt and constraint building, response and stream
chunk building with SSE framing) on the same bodies, as CPU time per call, so a change to
one step shows without the noise of the rest. Needs only the tokenizer; runs in seconds.

Usage:  .venv/bin/python load/overhead_steps.py
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "load")]
os.environ.setdefault("OPENCHAT_MODEL", str(ROOT / ".models" / "openchat-dev"))

from openchat.api import streaming  # noqa: E402
from openchat.protocol import outputs  # noqa: E402
from openchat.config import get_settings  # noqa: E402
from openchat.generation.template import OpenChatTemplate, OpenChatTokenizer, Turn, find_tokenizer_model  # noqa: E402
from openchat.protocol.requests import ChatCompletionRequest, CompletionRequest  # noqa: E402
from openchat.generation.pipeline import Pipeline  # noqa: E402
from overhead import QUESTION, payloads  # noqa: E402

TOKENS = 16  # answer length, as in overhead.py


class _Engine:
    max_model_len = 8192
    is_healthy = True


def cpu_ms(fn, n: int) -> float:
    fn()
    t0 = time.process_time()
    for _ in range(n):
        fn()
    return 1000 * (time.process_time() - t0) / n


def main() -> None:
    settings = get_settings()
    tokenizer = OpenChatTokenizer(find_tokenizer_model(settings.model))
    pipeline = Pipeline(settings, _Engine(), OpenChatTemplate(tokenizer))
    prompt_ids = pipeline.template.render_chat([Turn("user", QUESTION)], "GPT4 Correct")
    bodies = payloads(prompt_ids)
    steps = {}
    for name in ("chat", "chat_history", "json_schema"):
        raw = json.dumps(bodies[name][1]).encode()
        request = ChatCompletionRequest.model_validate_json(raw)
        steps[f"{name}: validate the request"] = (
            lambda raw=raw: ChatCompletionRequest.model_validate_json(raw), 500)
        steps[f"{name}: prepare (prompt ids, constraint, sampling)"] = (
            lambda request=request: pipeline.preparer.chat(request), 200)
    completion = CompletionRequest.model_validate(bodies["completion_ids"][1])
    steps["completion_ids: prompts and sampling"] = (
        lambda: pipeline.preparer.completion(completion), 500)

    state = outputs.ChoiceState(index=0, text="word " * TOKENS,
                                  token_ids=list(range(100, 100 + TOKENS)), finish_reason="length")

    def chat_response():
        completion = outputs.chat_completion("chatcmpl-x", "openchat-3.5", [state], 30, None,
                                               tokenizer.decode)
        return json.dumps(outputs.as_json(completion))

    def chat_stream():
        chunker = outputs.ChatChunker("chatcmpl-x", "openchat-3.5", True)
        chunks = [chunker.role(0)] + [chunker.content(0, "word ", None) for _ in range(TOKENS)]
        chunks += [chunker.finish(0, "length"), chunker.usage(30, TOKENS)]
        return [streaming._sse(c) for c in chunks]

    def completion_stream():
        chunks = [outputs.completion_chunk("cmpl-x", "openchat-3.5", 0, 0, "word ",
                                             "length" if i == TOKENS - 1 else None)
                  for i in range(TOKENS)]
        chunks.append(outputs.completion_usage_chunk("cmpl-x", "openchat-3.5", 0, 30, TOKENS))
        return [streaming._sse(c) for c in chunks]

    steps["chat: build and dump the response"] = (chat_response, 500)
    steps[f"chat_stream: {TOKENS + 3} chunks built and SSE-framed"] = (chat_stream, 300)
    steps[f"completion_ids_stream: {TOKENS + 1} chunks built and SSE-framed"] = (
        completion_stream, 300)

    print("| step | CPU ms per request |\n|---|---:|")
    for label, (fn, n) in steps.items():
        print(f"| {label} | {cpu_ms(fn, n):.3f} |")


if __name__ == "__main__":
    main()
