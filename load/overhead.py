"""What the service costs per request, on its own CPU: the BentoML worker process.

Starts the service once (load/bench.py's `make_targets`), then sends a fixed number of
requests, one at a time, on each path that matters and reads the CPU time of the worker
process (psutil, user + system, all its threads) before and after. The worker holds the
HTTP layer, our code and vLLM's AsyncLLM frontend (output processing, detokenisation);
the engine's model runs in the `VLLM::EngineCore` child, whose CPU is reported apart, for
information. CPU time per request is the key figure: unlike latency it hardly moves when
other work shares this 2-core machine. The idle worker's own CPU (watchdog, event loop)
is measured too and reported, not subtracted.

Paths (short answers: max_tokens 16 and ignore_eos where allowed):
  chat            POST /v1/chat/completions, one user turn
  chat_stream     the same, streamed, with usage in the stream
  chat_history    a 24-message conversation (~10k characters): tokenisation
  json_schema     response_format json_schema (a small closed object, finishes by itself)
  tool_call_stream  a named tool call, streamed (bench.py's tool_call workload)
  completion_ids  POST /v1/completions with a token-id prompt
  completion_ids_stream   the same, streamed

Usage:  .venv/bin/python load/overhead.py                     # 60 requests per path
        .venv/bin/python load/overhead.py -n 30 --paths chat chat_stream
        .venv/bin/python load/overhead.py --vllm    # and raw `vllm serve` on the
              # completion paths: its API server process is the floor for ours
        .venv/bin/python load/overhead.py --profile /tmp/worker.speedscope.json
              # py-spy (`pip install py-spy`) records the worker during one more round
              # of all paths; open the file at https://www.speedscope.app
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import psutil

from bench import MODEL_ID, ROOT, VENV_BIN, get_prompt_ids, make_targets, pct
from workloads import WEATHER_TOOL

QUESTION = "What are three good reasons to learn a second language?"
SCHEMA = {
    "type": "object",
    "properties": {"ok": {"type": "boolean"}, "level": {"enum": ["low", "high"]}},
    "required": ["ok", "level"],
    "additionalProperties": False,
}


def history(turns: int = 12) -> list[dict]:
    """A conversation of `turns` user/assistant pairs (~400 characters each) and a question."""
    text = ("We compared the three offers line by line: price per seat, support hours, "
            "the export format, how long the contract runs and what happens to our data "
            "when it ends. The second vendor was cheaper but only answers by email, and "
            "the third one wanted a three-year commitment before it would discuss a discount.")
    messages = [{"role": "system", "content": "You are a careful purchasing assistant."}]
    for i in range(turns):
        messages.append({"role": "user", "content": f"Point {i}: {text}"})
        messages.append({"role": "assistant", "content": f"Noted point {i}. {text}"})
    messages[-1] = {"role": "user", "content": "Which offer should we take, and why?"}
    return messages


# Paths raw vLLM serves identically (the dev model has no chat template for its chat route).
RAW_PATHS = ("completion_ids", "completion_ids_stream")


def payloads(prompt_ids: list[int]) -> dict[str, tuple[str, dict]]:
    """path name -> (URL path, body without the seed)."""
    short = {"model": MODEL_ID, "max_tokens": 16, "ignore_eos": True, "temperature": 0.7}
    user = [{"role": "user", "content": QUESTION}]
    stream = {"stream": True, "stream_options": {"include_usage": True}}
    return {
        "chat": ("/v1/chat/completions", {**short, "messages": user}),
        "chat_stream": ("/v1/chat/completions", {**short, "messages": user, **stream}),
        "chat_history": ("/v1/chat/completions", {**short, "messages": history()}),
        "json_schema": ("/v1/chat/completions", {
            "model": MODEL_ID, "max_tokens": 32, "temperature": 0.7, "messages": user,
            "response_format": {"type": "json_schema",
                                "json_schema": {"name": "verdict", "schema": SCHEMA}},
        }),
        "tool_call_stream": ("/v1/chat/completions", {
            "model": MODEL_ID, "max_tokens": 64, "temperature": 0.7, **stream,
            "messages": [{"role": "user", "content": "What is the weather in Lisbon?"}],
            "tools": [WEATHER_TOOL],
            "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
        }),
        "completion_ids": ("/v1/completions", {**short, "prompt": prompt_ids}),
        "completion_ids_stream": ("/v1/completions", {**short, "prompt": prompt_ids, **stream}),
    }


# --------------------------------------------------------------------------------------
# Processes


def find_worker(root_pid: int, timeout: float = 30) -> tuple[psutil.Process, psutil.Process]:
    """(BentoML worker, its VLLM::EngineCore child) among the server's descendants."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for proc in psutil.Process(root_pid).children(recursive=True):
            try:
                if "EngineCore" in proc.name() or "EngineCore" in " ".join(proc.cmdline()):
                    return proc.parent(), proc
            except psutil.NoSuchProcess:
                continue
        time.sleep(0.5)
    raise RuntimeError("no VLLM::EngineCore process under the server")


def cpu_seconds(proc: psutil.Process) -> float:
    t = proc.cpu_times()
    return t.user + t.system


# --------------------------------------------------------------------------------------
# Load


async def send(session: aiohttp.ClientSession, url: str, headers: dict, body: dict) -> dict:
    """One request; returns latency, completion tokens and an error (or None)."""
    t0 = time.perf_counter()
    async with session.post(url, json=body, headers=headers) as r:
        if r.status != 200:
            return {"latency": time.perf_counter() - t0, "tokens": 0,
                    "error": f"{r.status} {(await r.text())[:200]}"}
        if not body.get("stream"):
            data = await r.json()
            return {"latency": time.perf_counter() - t0,
                    "tokens": data["usage"]["completion_tokens"], "error": None}
        tokens, error = 0, None
        async for raw in r.content:
            line = raw.decode().strip()
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            event = json.loads(line[6:])
            if "error" in event:
                error = str(event["error"])[:200]
            if event.get("usage"):
                tokens = event["usage"]["completion_tokens"]
        return {"latency": time.perf_counter() - t0, "tokens": tokens, "error": error}


async def measure(target, worker, engine, name: str, path: str, body: dict, n: int,
                  warmup: int) -> dict:
    url = target.base_url + path
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as session:
        for i in range(warmup):
            result = await send(session, url, target.headers, {**body, "seed": 10_000 + i})
            if result["error"]:
                raise RuntimeError(f"{name}: warm-up failed: {result['error']}")
        samples = []
        w0, e0, t0 = worker.cpu_times(), cpu_seconds(engine), time.perf_counter()
        for i in range(n):
            samples.append(await send(session, url, target.headers, {**body, "seed": i}))
        w1, e1, wall = worker.cpu_times(), cpu_seconds(engine), time.perf_counter() - t0
    ok = [s for s in samples if not s["error"]]
    lat = [s["latency"] for s in ok]
    return {
        "path": path,
        "requests": n,
        "errors": n - len(ok),
        "error_examples": sorted({s["error"] for s in samples if s["error"]})[:3],
        "worker_cpu_ms_per_req": round(1000 * (w1.user + w1.system - w0.user - w0.system) / n, 2),
        "worker_system_ms_per_req": round(1000 * (w1.system - w0.system) / n, 2),
        "engine_cpu_ms_per_req": round(1000 * (e1 - e0) / n, 2),
        "wall_p50_ms": round(1000 * pct(lat, 0.5), 1) if lat else None,
        "wall_mean_ms": round(1000 * statistics.fmean(lat), 1) if lat else None,
        "completion_tokens_mean": round(statistics.fmean(s["tokens"] for s in ok), 1) if ok else None,
        "wall_s": round(wall, 2),
    }


def thread_cpu(proc: psutil.Process) -> dict[str, float]:
    """CPU seconds by thread name (threads of one name summed; "main": the event loop)."""
    out: dict[str, float] = {}
    for t in proc.threads():
        try:
            name = Path(f"/proc/{proc.pid}/task/{t.id}/comm").read_text().strip()
        except OSError:
            name = "?"
        name = "main" if t.id == proc.pid else f"other {name}"
        out[name] = out.get(name, 0.0) + t.user_time + t.system_time
    return out


def idle_cpu(worker: psutil.Process, seconds: float) -> float:
    """The idle worker's CPU in ms per second (its background work)."""
    c0 = cpu_seconds(worker)
    time.sleep(seconds)
    return round(1000 * (cpu_seconds(worker) - c0) / seconds, 2)


def start_profiler(pid: int, out: str, rate: int, native: bool) -> subprocess.Popen:
    py_spy = VENV_BIN / "py-spy"
    cmd = [str(py_spy if py_spy.exists() else "py-spy"), "record", "--pid", str(pid),
           "--format", "speedscope", "--output", out, "--rate", str(rate)]
    # Native frames (uvloop, sentencepiece, pydantic-core) need the process paused per
    # sample; without them sampling does not pause it.
    cmd.append("--native" if native else "--nonblocking")
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def stop_profiler(proc: subprocess.Popen) -> None:
    import signal

    proc.send_signal(signal.SIGINT)  # py-spy writes its file on SIGINT
    try:
        _, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        return
    if proc.returncode not in (0, None, -2):
        print(f"py-spy exited {proc.returncode}: {err.decode()[-500:]}", file=sys.stderr)


# --------------------------------------------------------------------------------------
# Report


def table(results: dict) -> str:
    lines = ["| path | requests | errors | worker CPU ms/req | of which system "
             "| EngineCore CPU ms/req | wall p50 ms | tokens out |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name, r in results["paths"].items():
        lines.append(f"| {name} | {r['requests']} | {r['errors']} | "
                     f"{r['worker_cpu_ms_per_req']} | {r['worker_system_ms_per_req']} | "
                     f"{r['engine_cpu_ms_per_req']} | "
                     f"{r['wall_p50_ms']} | {r['completion_tokens_mean']} |")
    for name, r in results.get("raw_vllm", {}).get("paths", {}).items():
        lines.append(f"| {name} (raw vLLM) | {r['requests']} | {r['errors']} | "
                     f"{r['worker_cpu_ms_per_req']} | {r['worker_system_ms_per_req']} | "
                     f"{r['engine_cpu_ms_per_req']} | {r['wall_p50_ms']} | "
                     f"{r['completion_tokens_mean']} |")
    lines.append("")
    threads = ", ".join(f"{k} {v}" for k, v in results["worker_threads_cpu_ms_per_req"].items())
    lines.append(f"Worker CPU by thread, ms per request over all paths: {threads}.")
    lines.append(f"Idle worker: {results['idle_worker_cpu_ms_per_s']} ms CPU per second; "
                 f"load average at the start {results['machine']['loadavg_start']}, "
                 f"at the end {results['machine']['loadavg_end']}.")
    return "\n".join(lines)


async def run(args, target, prompt_ids, paths: list[str]) -> dict:
    startup = await target.wait_ready(args.startup_timeout)
    worker, engine = find_worker(target.proc.pid)
    print(f"ready after {startup:.0f} s; worker pid {worker.pid}, EngineCore pid {engine.pid}",
          flush=True)
    bodies = payloads(prompt_ids)
    await asyncio.sleep(2)  # let start-up work settle
    results = {"idle_worker_cpu_ms_per_s": idle_cpu(worker, args.idle_seconds), "paths": {}}
    threads0 = thread_cpu(worker)
    for name in paths:
        path, body = bodies[name]
        r = await measure(target, worker, engine, name, path, body, args.requests, args.warmup)
        results["paths"][name] = r
        print(f"  {name:22s} worker {r['worker_cpu_ms_per_req']:7.2f} ms/req  engine "
              f"{r['engine_cpu_ms_per_req']:7.2f} ms/req  p50 {r['wall_p50_ms']} ms  "
              f"errors {r['errors']}", flush=True)
    threads1 = thread_cpu(worker)
    total = args.requests * len(paths)
    by_thread = {name: round(1000 * (threads1[name] - threads0.get(name, 0.0)) / total, 2)
                 for name in threads1}
    results["worker_threads_cpu_ms_per_req"] = dict(
        sorted(((k, v) for k, v in by_thread.items() if v > 0), key=lambda kv: -kv[1]))
    if args.profile and target.name == "service":
        profiler = start_profiler(worker.pid, args.profile, args.profile_rate,
                                  args.profile_native)
        await asyncio.sleep(2)
        try:
            for round_ in range(args.profile_rounds):
                for name in paths:
                    path, body = bodies[name]
                    await measure(target, worker, engine, name, path, body, args.requests, 0)
        finally:
            stop_profiler(profiler)
        print(f"profile: {args.profile}", flush=True)
    return results


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-n", "--requests", type=int, default=60, help="per path")
    p.add_argument("--warmup", type=int, default=5, help="unmeasured requests per path")
    p.add_argument("--paths", nargs="+", default=list(payloads([1]).keys()),
                   choices=list(payloads([1]).keys()))
    p.add_argument("--model", default=".models/openchat-dev")
    p.add_argument("--service-port", type=int, default=18433)
    p.add_argument("--vllm", action="store_true",
                   help="then measure raw `vllm serve` (its API server process) on the "
                        "completion paths, the floor the service is compared with")
    p.add_argument("--vllm-port", type=int, default=18434)
    p.add_argument("--idle-seconds", type=float, default=5)
    p.add_argument("--startup-timeout", type=float, default=900)
    p.add_argument("--profile", help="write a py-spy speedscope profile of the worker here")
    p.add_argument("--profile-rate", type=int, default=250, help="py-spy samples per second")
    p.add_argument("--profile-rounds", type=int, default=1)
    p.add_argument("--profile-native", action="store_true",
                   help="include native frames (pauses the worker for each sample)")
    p.add_argument("--out", default=str(ROOT / "load" / "overhead.json"))
    args = p.parse_args()

    prompt_ids = asyncio.run(get_prompt_ids(QUESTION))
    tmp = Path(tempfile.mkdtemp(prefix="openchat-overhead-"))
    targets = make_targets(args, tmp)
    loadavg_start = os.getloadavg()
    results = {}
    for key in ["service"] + (["vllm"] if args.vllm else []):
        target = targets[key]
        paths = args.paths if key == "service" else [p for p in args.paths if p in RAW_PATHS]
        print(f"== {target.name}", flush=True)
        target.start()
        try:
            results[key] = asyncio.run(run(args, target, prompt_ids, paths))
        finally:
            target.stop()
    results = {
        "config": {k: v for k, v in vars(args).items()},
        "commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                                 capture_output=True, text=True).stdout.strip(),
        "machine": {"cpus": len(os.sched_getaffinity(0)),
                    "loadavg_start": [round(x, 2) for x in loadavg_start],
                    "loadavg_end": [round(x, 2) for x in os.getloadavg()]},
        "logs": str(tmp),
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        **results["service"],
        **({"raw_vllm": results["vllm"]} if "vllm" in results else {}),
    }
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    print()
    print(table(results))
    print(f"\nresults: {args.out}; server log: {tmp / 'service.log'}")


if __name__ == "__main__":
    main()
