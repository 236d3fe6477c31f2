"""Where one streamed answer's time goes: the engine's own timings against the client's.

At one request at a time, the service's p50 latency is compared with raw vLLM's in
load/bench.py. A gap there is either the engine decoding slower (its steps take longer:
something shares its core) or the HTTP side adding time (request handling before the
engine, per-chunk work after it). This tells them apart: for each target, interleaved
rounds of N streamed answers one at a time, per workload of load/workloads.py (the same
bodies bench.py sends), and per round the means of

  * engine_ms: vLLM's own request latency, arrival to finish
    (`vllm:e2e_request_latency_seconds`), and engine_itl_ms, its time between tokens
    (`vllm:inter_token_latency_seconds`): sum / count from /metrics, read before and after
    the round (both targets export them);
  * client_ms: the whole answer as the client timed it, and client_itl_ms, the time
    between the first and the last chunk carrying output over the chunks between;

so client_ms - engine_ms is the HTTP side's share.

On a shared 2-core host the engine's own speed drifts by up to 50 % between windows of a
few minutes (the same target's time between tokens moved from 4.9 to 7.5 ms from one
round to the next), so rounds minutes apart compare the windows as much as the servers.
--paired runs both servers at once and alternates short blocks of answers between them
(raw, service, service, raw, ...), each after a pause long enough for the idle engine's
busy-wait to end (vLLM spins for 1 s after its last message), and reports the median of
the per-block ratios: both sides of a ratio ran seconds apart, in the same window.

Usage:  .venv/bin/python load/token_gap.py                 # 3 rounds of 20 per workload
        .venv/bin/python load/token_gap.py --paired        # 12 blocks of 5, both servers up
        .venv/bin/python load/token_gap.py --workloads tool_call --rounds 5 -n 30
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from pathlib import Path

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from bench import MODEL_ID, add_target_arguments, get_prompt_ids, make_targets, provenance
from workloads import QUESTION, Workload, first_output, make_workloads

MAX_TOKENS = 64
HISTOGRAMS = {"engine_ms": "vllm:e2e_request_latency_seconds",
              "engine_itl_ms": "vllm:inter_token_latency_seconds"}


async def engine_totals(client: aiohttp.ClientSession, target) -> dict[str, tuple[float, float]]:
    """(sum of seconds, count) of each engine histogram so far, over its label sets."""
    async with client.get(target.base_url + "/metrics", headers=target.headers) as r:
        families = {f.name: f for f in text_string_to_metric_families(await r.text())}
    totals = {}
    for key, name in HISTOGRAMS.items():
        samples = families[name].samples if name in families else []
        totals[key] = tuple(sum(s.value for s in samples if s.name == name + suffix)
                            for suffix in ("_sum", "_count"))
    return totals


async def one_answer(client: aiohttp.ClientSession, target, path: str,
                     body: dict) -> tuple[float, float]:
    """(seconds, seconds between output chunks) of one streamed answer, client side."""
    t0 = time.perf_counter()
    arrivals = []
    async with client.post(target.base_url + path, json=body, headers=target.headers) as r:
        r.raise_for_status()
        async for raw in r.content:
            line = raw.decode().strip()
            if line.startswith("data: {") and first_output(json.loads(line[6:])):
                arrivals.append(time.perf_counter())
    elapsed = time.perf_counter() - t0
    return elapsed, (arrivals[-1] - arrivals[0]) / max(1, len(arrivals) - 1)


async def measure(target, workload: Workload, n: int, first_seed: int = 100,
                  warm_up: bool = True) -> dict:
    def body(seed: int) -> dict:
        return workload.request(seed, MAX_TOKENS, True, raw=target.raw)

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as client:
        for seed in range(3 if warm_up else 0):  # and the prefix cache, as in bench.py
            await one_answer(client, target, workload.path, body(seed))
        before = await engine_totals(client, target)
        answers = [await one_answer(client, target, workload.path, body(first_seed + i))
                   for i in range(n)]
        after = await engine_totals(client, target)
    out = {}
    for key in HISTOGRAMS:
        count = after[key][1] - before[key][1]
        out[key] = round(1000 * (after[key][0] - before[key][0]) / count, 2) if count else None
    out["client_ms"] = round(1000 * statistics.mean(a[0] for a in answers), 2)
    out["client_itl_ms"] = round(1000 * statistics.mean(a[1] for a in answers), 2)
    out["http_ms"] = round(out["client_ms"] - out["engine_ms"], 2) if out["engine_ms"] else None
    return out


async def run_round(target, workloads: list[Workload], n: int, timeout: float) -> dict:
    target.start()
    try:
        await target.wait_ready(timeout)
        return {w.name: await measure(target, w, n) for w in workloads}
    finally:
        target.stop()


PAUSE_S = 1.5  # longer than vLLM's 1 s busy-wait after an engine's last message


async def paired(targets: dict, workloads: list[Workload], blocks: int, n: int,
                 timeout: float) -> list[dict]:
    """Both servers up; blocks of n answers alternate between them, order flipped each
    block so neither always goes first."""
    for target in targets.values():
        target.start()
    try:
        for target in targets.values():
            await target.wait_ready(timeout)
        for w in workloads:  # warm-up, outside any block
            for target in targets.values():
                await measure(target, w, 1)
        out = []
        for block in range(blocks):
            names = list(targets) if block % 2 == 0 else list(reversed(targets))
            one: dict = {name: {} for name in names}
            for w in workloads:
                for name in names:
                    await asyncio.sleep(PAUSE_S)
                    one[name][w.name] = await measure(targets[name], w, n,
                                                      first_seed=1000 + block * n, warm_up=False)
            print(f"block {block + 1}: " + ", ".join(
                f"{w.name} {one['service'][w.name]['client_ms'] / one['vllm'][w.name]['client_ms']:.3f}"
                for w in workloads), flush=True)
            out.append(one)
        return out
    finally:
        for target in targets.values():
            target.stop()


def report(result: dict, names: list[str]) -> None:
    rounds = result["rounds"]
    print(f"\nmedian over {len(rounds)} {'blocks' if result['config']['paired'] else 'rounds'} "
          "(ms): workload, measure: raw vLLM / service; service / raw per block or round")
    for w in names:
        for key in ("engine_ms", "engine_itl_ms", "client_ms", "client_itl_ms", "http_ms"):
            medians = [statistics.median(r[t][w][key] for r in rounds) for t in ("vllm", "service")]
            line = f"  {w:12} {key:14} {medians[0]:8.2f} / {medians[1]:8.2f}"
            if key in ("engine_ms", "client_ms"):
                ratios = [r["service"][w][key] / r["vllm"][w][key] for r in rounds]
                line += (f"   ratio {statistics.median(ratios):.3f} "
                         f"({min(ratios):.3f}-{max(ratios):.3f})")
            print(line)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_target_arguments(p)
    p.add_argument("--workloads", nargs="+", default=["chat", "json_schema", "tool_call"])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("-n", type=int, default=20, help="answers per workload, target and round")
    p.add_argument("--paired", action="store_true",
                   help="both servers up at once, alternating blocks (see above)")
    p.add_argument("--blocks", type=int, default=12, help="--paired: blocks per target")
    p.add_argument("--out", default="/tmp/token_gap.json")
    args = p.parse_args()
    if args.paired and args.n == 20:
        args.n = 5  # answers per block
    all_workloads = make_workloads(asyncio.run(get_prompt_ids(QUESTION)), MODEL_ID)
    workloads = [all_workloads[name] for name in args.workloads]
    result = {**provenance(args), "rounds": []}
    with tempfile.TemporaryDirectory(prefix="openchat-token-gap-") as tmp:
        targets = make_targets(args, Path(tmp))
        if args.paired:
            result["rounds"] = asyncio.run(paired(targets, workloads, args.blocks, args.n,
                                                  args.startup_timeout))
        for i in range(0 if args.paired else args.rounds):
            one = {}
            for name, target in targets.items():
                one[name] = asyncio.run(run_round(target, workloads, args.n, args.startup_timeout))
                print(f"round {i + 1} {name}: {one[name]}", flush=True)
            result["rounds"].append(one)
    report(result, args.workloads)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"(written to {args.out})")


if __name__ == "__main__":
    main()
