"""Does vLLM's priority scheduling hold on this build? (The batch runner relies on it.)

One AsyncLLM on the dev model with room for two sequences: six long low-priority requests
(batch lines) are queued, then one short priority-0 request (interactive). With the
`priority` policy it should finish right after the two running requests; with `fcfs` it
waits behind all six. Prints the finish order and times.

    .venv/bin/python load/priority.py priority 10     # as the service runs
    .venv/bin/python load/priority.py fcfs 0          # the comparison
"""

import asyncio
import os
import sys
import time

MODEL = os.environ.get("OPENCHAT_MODEL", ".models/openchat-dev")
PROMPT = [1, 420, 6316, 28781] * 8


async def one(llm, request_id: str, priority: int, tokens: int, started: float,
              finished: list) -> None:
    from vllm import SamplingParams
    from vllm.inputs import tokens_input

    params = SamplingParams(max_tokens=tokens, ignore_eos=True, temperature=0)
    async for _ in llm.generate(tokens_input(PROMPT), params, request_id, priority=priority):
        pass
    finished.append((request_id, round(time.perf_counter() - started, 2)))


async def run(policy: str, batch_priority: int) -> None:
    from vllm import AsyncEngineArgs
    from vllm.v1.engine.async_llm import AsyncLLM

    llm = AsyncLLM.from_engine_args(AsyncEngineArgs(
        model=MODEL, max_num_seqs=2, max_model_len=512, scheduling_policy=policy,
        enforce_eager=True, enable_prefix_caching=False))
    try:
        await one(llm, "warm-up", 0, 4, time.perf_counter(), [])
        started, finished = time.perf_counter(), []
        tasks = [asyncio.create_task(one(llm, f"batch{i}", batch_priority, 96, started,
                                         finished)) for i in range(6)]
        await asyncio.sleep(0.3)
        tasks.append(asyncio.create_task(one(llm, "interactive", 0, 8, started, finished)))
        await asyncio.gather(*tasks)
        order = [request_id for request_id, _ in finished]
        print(f"{policy} (batch priority {batch_priority}): {finished}; the interactive "
              f"request finished #{order.index('interactive') + 1} of {len(order)}")
    finally:
        llm.shutdown()


if __name__ == "__main__":
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "0")
    asyncio.run(run(sys.argv[1] if len(sys.argv) > 1 else "priority",
                    int(sys.argv[2]) if len(sys.argv) > 2 else 10))
