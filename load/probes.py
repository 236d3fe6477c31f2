"""Does the server stay responsive while it generates long answers?

Starts the service (and with --vllm raw `vllm serve`, load/bench.py's `make_targets`),
then, while `--long` answers of `--tokens` tokens run (half streamed, half collected
whole, `ignore_eos`), times what a load balancer and other clients send meanwhile:
the readiness probe every 0.25 s, /metrics every second and a short completion (4
tokens) every second. Kubernetes' default probe timeout is 1 s.

The prober runs in this process; its own wait for a CPU is read from the kernel
(/proc/self/schedstat: time runnable but not running) and reported, so a slow answer can
be told from a client that was itself waiting for a core.

Usage:  .venv/bin/python load/probes.py                      # 4 long answers of 4000 tokens
        .venv/bin/python load/probes.py --long 2 --tokens 6000 --vllm
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from pathlib import Path

import httpx
from bench import MODEL_ID, ROOT, add_target_arguments, make_targets, pct, provenance, schedstat

# Completions with a text prompt: raw vLLM serves them without a chat template.
SHORT = {"model": MODEL_ID, "prompt": "Hi", "max_tokens": 4}


async def _long_answer(client: httpx.AsyncClient, url: str, tokens: int, stream: bool,
                       prompt: str) -> float:
    body = {"model": MODEL_ID, "prompt": prompt, "max_tokens": tokens, "ignore_eos": True,
            "stream": stream}
    started = time.monotonic()
    if stream:
        async with client.stream("POST", url, json=body) as response:
            async for _ in response.aiter_lines():
                pass
    else:
        (await client.post(url, json=body)).raise_for_status()
    return time.monotonic() - started


async def _probe(client: httpx.AsyncClient, method: str, url: str, every: float,
                 until: asyncio.Event, samples: list[float], **kwargs) -> None:
    while not until.is_set():
        started = time.monotonic()
        try:
            await client.request(method, url, **kwargs)
            samples.append(time.monotonic() - started)
        except httpx.HTTPError:
            samples.append(float("inf"))
        await asyncio.sleep(max(0.0, every - (time.monotonic() - started)))


async def run(target, args) -> dict:
    await target.wait_ready(args.startup_timeout)
    base = target.base_url
    chat = f"{base}/v1/completions"
    limits = httpx.Limits(max_connections=64)
    async with httpx.AsyncClient(timeout=600, headers=target.headers, limits=limits) as client:
        await client.post(chat, json=SHORT)  # warm
        done = asyncio.Event()
        samples: dict[str, list[float]] = {"readiness": [], "metrics": [], "short_request": []}
        ready_path = target.ready_path
        probes = [
            asyncio.create_task(_probe(client, "GET", base + ready_path, 0.25, done,
                                       samples["readiness"])),
            asyncio.create_task(_probe(client, "GET", f"{base}/metrics", 1.0, done,
                                       samples["metrics"])),
            asyncio.create_task(_probe(client, "POST", chat, 1.0, done, samples["short_request"],
                                       json=SHORT)),
        ]
        wait_before = schedstat()[1]
        started = time.monotonic()
        durations = await asyncio.gather(*[
            _long_answer(client, chat, args.tokens, stream=i % 2 == 0,
                         prompt=f"Tell a long story, number {i}.")
            for i in range(args.long)])
        wall = time.monotonic() - started
        done.set()
        await asyncio.gather(*probes)
    own_wait = schedstat()[1] - wait_before
    return {
        "long_answers": {"count": args.long, "tokens": args.tokens,
                         "seconds": [round(d, 1) for d in durations]},
        "wall_s": round(wall, 1),
        "prober_run_queue_wait_s": round(own_wait, 2),
        **{name: _summary(values) for name, values in samples.items()},
    }


def _summary(values: list[float]) -> dict:
    finite = sorted(v for v in values if v != float("inf"))
    if not finite:
        return {"n": len(values), "failed": len(values)}
    return {"n": len(values), "failed": len(values) - len(finite),
            "p50_ms": round(pct(finite, 0.5) * 1000, 1),
            "p95_ms": round(pct(finite, 0.95) * 1000, 1),
            "max_ms": round(finite[-1] * 1000, 1),
            "over_1s": sum(v > 1 for v in values)}


def table(results: dict) -> str:
    lines = ["| target | probe | n | p50 ms | p95 ms | max ms | over 1 s |",
             "|---|---|---|---|---|---|---|"]
    for name, result in results["targets"].items():
        for probe in ("readiness", "metrics", "short_request"):
            s = result[probe]
            lines.append(f"| {name} | {probe} | {s['n']} | {s.get('p50_ms')} | "
                         f"{s.get('p95_ms')} | {s.get('max_ms')} | {s.get('over_1s')} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_target_arguments(p)
    p.add_argument("--long", type=int, default=4, help="long answers running together")
    p.add_argument("--tokens", type=int, default=4000)
    p.add_argument("--vllm", action="store_true", help="measure raw vLLM too")
    p.add_argument("--out", default=str(ROOT / "load" / "probes.json"))
    args = p.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="openchat-probes-"))
    targets = make_targets(args, tmp)
    results = {}
    for key in ["service"] + (["vllm"] if args.vllm else []):
        target = targets[key]
        if key == "vllm":
            target.headers = {}
        print(f"== {target.name}", flush=True)
        target.start()
        try:
            results[target.name] = asyncio.run(run(target, args))
        finally:
            target.stop()
    report = {
        **provenance(args),
        "logs": str(tmp),
        "targets": results,
    }
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(results, indent=2))
    print(table(report))


if __name__ == "__main__":
    main()
