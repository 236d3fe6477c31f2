"""Interactive latency with and without a batch running in the same engine.

Starts the service (load/bench.py's `make_targets`), then twice sends the same open-loop
interactive load (`--rate` short chat requests per second for `--duration` s, Poisson
arrivals): once on an idle service, once while a batch of `--lines` chat lines
(`--line-tokens` each) runs at the batch priority. Reports interactive p50/p95 for both,
their ratio, and how many batch lines finished meanwhile (the idle capacity it used).

Usage:  .venv/bin/python load/batch_latency.py                    # -> load/batch_latency.json
        .venv/bin/python load/batch_latency.py --rate 4 --lines 400
        .venv/bin/python load/batch_latency.py --set OPENCHAT_BATCH__PREEMPT_FOR_INTERACTIVE=false
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import random
import statistics
import tempfile
import time
from pathlib import Path

import httpx
from bench import MODEL_ID, ROOT, add_target_arguments, make_targets, pct, provenance

INTERACTIVE = {"model": MODEL_ID, "messages": [{"role": "user", "content": "Hi there"}],
               "max_tokens": 32, "ignore_eos": True}


async def interactive_load(target, rate: float, duration: float, seed: int) -> list[float]:
    rng = random.Random(seed)
    latencies: list[float] = []
    async with httpx.AsyncClient(base_url=target.base_url, headers=target.headers,
                                 timeout=120, limits=httpx.Limits(max_connections=256)) as c:
        async def one() -> None:
            started = time.monotonic()
            response = await c.post("/v1/chat/completions", json=INTERACTIVE)
            response.raise_for_status()
            latencies.append(time.monotonic() - started)

        tasks, end = [], time.monotonic() + duration
        while time.monotonic() < end:
            tasks.append(asyncio.create_task(one()))
            await asyncio.sleep(rng.expovariate(rate))
        await asyncio.gather(*tasks)
    return latencies


def start_batch(target, lines: int, tokens: int):
    from openai import OpenAI

    client = OpenAI(base_url=f"{target.base_url}/v1",
                    api_key=target.headers["Authorization"].split()[1], max_retries=0)
    body = "".join(json.dumps({
        "custom_id": f"line-{i}", "method": "POST", "url": "/v1/chat/completions",
        "body": {"model": MODEL_ID, "max_tokens": tokens, "ignore_eos": True,
                 "messages": [{"role": "user", "content": f"Summarise document {i}."}]},
    }) + "\n" for i in range(lines))
    upload = client.files.create(file=("lines.jsonl", io.BytesIO(body.encode())),
                                 purpose="batch")
    batch = client.batches.create(input_file_id=upload.id, endpoint="/v1/chat/completions",
                                  completion_window="24h")
    return client, batch.id


def summary(latencies: list[float]) -> dict:
    return {"n": len(latencies), "p50_ms": round(pct(latencies, 0.5) * 1000, 1),
            "p95_ms": round(pct(latencies, 0.95) * 1000, 1)}


async def one_round(target, args, seed: int) -> dict:
    """The same interactive load alone, then while a fresh batch runs."""
    alone = summary(await interactive_load(target, args.rate, args.duration, seed=seed))
    client, batch_id = start_batch(target, args.lines, args.line_tokens)
    await asyncio.sleep(3)  # the runner has claimed its first lines
    before = client.batches.retrieve(batch_id).request_counts
    with_batch = summary(await interactive_load(target, args.rate, args.duration, seed=seed))
    after = client.batches.retrieve(batch_id).request_counts
    client.batches.cancel(batch_id)
    while client.batches.retrieve(batch_id).status not in ("cancelled", "completed"):
        await asyncio.sleep(0.5)  # its lines in flight end before the next "alone"
    return {
        "interactive_alone": alone,
        "interactive_with_batch": with_batch,
        "p95_ratio": round(with_batch["p95_ms"] / alone["p95_ms"], 3),
        "p50_ratio": round(with_batch["p50_ms"] / alone["p50_ms"], 3),
        "batch_lines_done_during_load": after.completed - before.completed,
        "batch_lines_per_s": round((after.completed - before.completed) / args.duration, 2),
    }


async def run(target, args) -> dict:
    await target.wait_ready(args.startup_timeout)
    await interactive_load(target, args.rate, 5, seed=0)  # warm-up
    rounds = []
    for number in range(1, args.rounds + 1):
        rounds.append(await one_round(target, args, seed=number))
        print(f"round {number}: {json.dumps(rounds[-1])}", flush=True)
    median = statistics.median
    return {
        "rounds": rounds,
        "p95_ratio_median": median(r["p95_ratio"] for r in rounds),
        "p50_ratio_median": median(r["p50_ratio"] for r in rounds),
        "batch_lines_per_s_median": median(r["batch_lines_per_s"] for r in rounds),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_target_arguments(p)
    p.add_argument("--rate", type=float, default=3.0, help="interactive requests per second")
    p.add_argument("--duration", type=float, default=40)
    p.add_argument("--lines", type=int, default=400)
    p.add_argument("--line-tokens", type=int, default=64)
    p.add_argument("--rounds", type=int, default=3, help="alone/with-batch pairs; the "
                   "report gives the median of their ratios")
    p.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                   help="a service setting for this run, e.g. "
                   "OPENCHAT_BATCH__PREEMPT_FOR_INTERACTIVE=false")
    p.add_argument("--out", default=str(ROOT / "load" / "batch_latency.json"))
    args = p.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="openchat-batch-latency-"))
    target = make_targets(args, tmp)["service"]
    target.env["OPENCHAT_BATCH__STORE_URL"] = f"sqlite:///{tmp}/batches.db"
    target.env["OPENCHAT_BATCH__FILES_DIR"] = str(tmp / "files")
    target.env.update(setting.split("=", 1) for setting in args.set)
    target.start()
    try:
        result = asyncio.run(run(target, args))
    finally:
        target.stop()
    report = {
        **provenance(args),
        "settings": args.set,
        "logs": str(tmp),
        **result,
    }
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
