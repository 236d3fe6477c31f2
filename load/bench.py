"""Benchmark this service against raw vLLM on the same model, machine and load.

Starts raw vLLM's OpenAI server, drives it, stops it; then starts this service
(`bentoml serve service:OpenChat`), drives it with the same load, stops it; prints a
markdown comparison, writes load/results.json and (when matplotlib or Pillow is
importable) two PNG charts: p95 latency against request rate, and the service / raw vLLM
ratios per workload over all rounds (load/comparison_chart.py).

Both targets get the same requests, one kind per workload (load/workloads.py: token-id
completions, chat, json_schema output, a forced tool call, a long shared system prompt).
The dev model has no chat template: raw vLLM is given OpenChat's
(load/openchat-chat-template.jinja), so chat requests are comparable.

Load:
  * closed loop, per workload: N concurrent workers, each sending the next request as soon
    as the last one ends (streaming, so the time to the first token is measured), for each
    level;
  * open loop, one workload (token-id completions by default): requests started at a
    fixed rate regardless of completions (non-streaming, max_tokens 32), for each rate; p95
    latency per rate, and the highest rate whose p95 stays under the threshold.

The load generator uses aiohttp, not httpx: on this machine httpx.AsyncClient received
raw vLLM's SSE stream in one burst at the end of generation (the time to first token then
equals the whole latency), while aiohttp, httpx's sync client and a bare asyncio socket all
saw the tokens arrive one by one. httpx is only used for the readiness probe.

Each round starts raw vLLM, loads it, stops it, then does the same with the service;
rounds interleave (raw, service, raw, service, ...) and the report gives every figure as
the median over the rounds with its range, and the service/raw ratios as the median of the
per-round ratios, so one slow round on a shared machine shows as spread, not as a result.
With --paired both servers stay up and every measurement (a workload at a level, a rate)
is taken from one and then the other, seconds apart: this host's speed drifts by up to
1.6x between windows minutes apart, and a ratio is then only as good as its two halves
being measured in the same window.

Usage:  .venv/bin/python load/bench.py                 # 3 rounds: ~35 minutes on 2 cores
        .venv/bin/python load/bench.py --workloads chat tool_call --rates 5 10
        .venv/bin/python load/bench.py --rounds 5      # more rounds, tighter medians
        .venv/bin/python load/bench.py --quick         # smoke run, one round, ~3 minutes
        .venv/bin/python load/bench.py --paired        # both up, measurements alternate
        .venv/bin/python load/bench.py --only service  # one target
        .venv/bin/python load/bench.py --chart-only load/results.json  # redraw, run nothing
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import aiohttp  # a vLLM dependency; see the note on httpx below
import httpx
from comparison_chart import draw_workloads_chart, workloads_chart_path
from workloads import CHAT_TEMPLATE, Workload, first_output, make_workloads

WORKLOADS = list(make_workloads([], ""))  # their names, in report order

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = ROOT / ".venv" / "bin"
MODEL_ID = "openchat-3.5"

# "GPT4 Correct User: <text><|end_of_turn|>GPT4 Correct Assistant:" rendered by the service's
# /tokenize for a short general question; a fixed token-level prompt for both targets.
DEFAULT_PROMPT_TEXT = "What are three good reasons to learn a second language?"


# --------------------------------------------------------------------------------------
# Servers


def provenance(args) -> dict:
    """What a result file records about its run: options, commit, time and machine."""
    return {
        "config": dict(vars(args)),
        "commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                                 capture_output=True, text=True).stdout.strip(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"cpus": len(os.sched_getaffinity(0)),
                    "loadavg_end": [round(x, 2) for x in os.getloadavg()]},
    }


def add_target_arguments(p: argparse.ArgumentParser, startup_timeout: float = 600) -> None:
    """The options every script here that starts targets with make_targets() takes."""
    p.add_argument("--model", default=".models/openchat-dev")
    p.add_argument("--vllm-port", type=int, default=18431)
    p.add_argument("--service-port", type=int, default=18432)
    p.add_argument("--startup-timeout", type=float, default=startup_timeout)
    p.add_argument("--raw-whole-prefill", action="store_true",
                   help="give raw vLLM the service's prefill setting (no chunked prefill, "
                        "an 8192-token step budget): with vLLM's default, seeded requests "
                        "whose prefills are split kill raw vLLM's engine on CPU "
                        "(docs/deployment.md, CPU hosts)")


def _cpu_bind() -> str:
    """The same OpenMP binding the service computes (openchat/generation/engine.py): the declared cpu
    count (configuration.yaml: 4) capped by the host, minus one core for HTTP."""
    sys.path.insert(0, str(ROOT))
    from openchat.generation.engine import cpu_thread_binding

    return cpu_thread_binding(4, "auto")


@dataclass
class Target:
    name: str
    base_url: str
    headers: dict
    cmd: list[str]
    env: dict
    ready_path: str
    log: Path
    raw: bool = False  # raw vLLM: gets a workload's raw_body where it has one
    proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        fh = open(self.log, "wb")
        self.proc = subprocess.Popen(
            self.cmd, cwd=ROOT, env=self.env, stdout=fh, stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    async def wait_ready(self, timeout: float) -> float:
        t0 = time.monotonic()
        async with httpx.AsyncClient(timeout=5) as client:
            while time.monotonic() - t0 < timeout:
                if self.proc and self.proc.poll() is not None:
                    raise RuntimeError(f"{self.name} exited with {self.proc.returncode}; see {self.log}")
                try:
                    r = await client.get(self.base_url + self.ready_path, headers=self.headers)
                    if r.status_code == 200:
                        return time.monotonic() - t0
                except httpx.HTTPError:
                    pass
                await asyncio.sleep(1)
        raise TimeoutError(f"{self.name} not ready after {timeout}s; see {self.log}")

    def stop(self) -> None:
        if not self.proc or self.proc.poll() is not None:
            return
        # The server was started in its own session: signal its process group only.
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)
        except ProcessLookupError:
            pass


def make_targets(args, tmp: Path) -> dict[str, Target]:
    bind = _cpu_bind()
    base_env = dict(os.environ, HF_HUB_OFFLINE="1", VLLM_CPU_KVCACHE_SPACE="1",
                    VLLM_CPU_OMP_THREADS_BIND=bind, PYTHONUNBUFFERED="1")
    vllm = Target(
        name="raw vLLM",
        base_url=f"http://127.0.0.1:{args.vllm_port}",
        headers={},
        cmd=[str(VENV_BIN / "python"), "-m", "vllm.entrypoints.openai.api_server",
             "--model", args.model, "--served-model-name", MODEL_ID,
             "--host", "127.0.0.1", "--port", str(args.vllm_port),
             "--max-model-len", "8192", "--max-num-seqs", "64", "--dtype", "bfloat16",
             "--seed", "0", "--enable-prefix-caching", "--chat-template", str(CHAT_TEMPLATE),
             "--structured-outputs-config", '{"backend": "xgrammar", "disable_any_whitespace": true}',
             # getattr: overhead.py and soak.py build args without add_target_arguments.
             *(["--no-enable-chunked-prefill", "--max-num-batched-tokens", "8192"]
               if getattr(args, "raw_whole_prefill", False) else [])],
        env=base_env,
        ready_path="/health",
        log=tmp / "vllm.log",
        raw=True,
    )
    admin_key = "oc-bench-admin-key-0123456789abcdef"
    svc_env = dict(
        base_env,
        OPENCHAT_MODEL=args.model,
        OPENCHAT_ENGINE__CPU_KV_CACHE_GIB="1",
        OPENCHAT_ADMIN_KEY=admin_key,
        OPENCHAT_AUTH__DEFAULT_RPM="1000000",
        OPENCHAT_AUTH__DEFAULT_TPM="1000000000",
        OPENCHAT_AUTH__DEFAULT_MAX_CONCURRENCY="10000",
        OPENCHAT_SQL__URL=f"sqlite:///{tmp}/shop.db",
        OPENCHAT_DOCUMENTS__PATH=str(tmp / "chroma"),
        OPENCHAT_AUTH__KEYS_URL=f"sqlite:///{tmp}/keys.db",
        OPENCHAT_RESPONSES__STORE_URL=f"sqlite:///{tmp}/responses.db",
        BENTOML_HOME=str(tmp / "bentoml"),
    )
    # The service sets the binding itself (same value); do not pre-empt it.
    svc_env.pop("VLLM_CPU_OMP_THREADS_BIND", None)
    svc_env.pop("VLLM_CPU_KVCACHE_SPACE", None)
    service = Target(
        name="service",
        base_url=f"http://127.0.0.1:{args.service_port}",
        headers={"Authorization": f"Bearer {admin_key}"},
        cmd=[str(VENV_BIN / "bentoml"), "serve", "service:OpenChat",
             "--host", "127.0.0.1", "--port", str(args.service_port)],
        env=svc_env,
        ready_path="/readyz",
        log=tmp / "service.log",
    )
    return {"vllm": vllm, "service": service}


# --------------------------------------------------------------------------------------
# Load


@dataclass
class Sample:
    ok: bool
    latency: float
    ttft: float | None = None
    tokens: int = 0
    status: int = 0
    error: str = ""
    prompt_tokens: int = 0  # as the server counted them: the two sides' prompts compared


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    v = sorted(values)
    if len(v) == 1:
        return v[0]
    k = (len(v) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(v) - 1)
    return v[lo] + (v[hi] - v[lo]) * (k - lo)


def schedstat(pid: int | str = "self") -> tuple[float, float]:
    """(seconds on a CPU, seconds runnable but waiting for one) of a process, over its
    threads, as the kernel counts them (/proc/<pid>/task/*/schedstat)."""
    on_cpu = waiting = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        ran, waited, _ = (int(v) for v in (task / "schedstat").read_text().split())
        on_cpu, waiting = on_cpu + ran, waiting + waited
    return on_cpu / 1e9, waiting / 1e9


async def one_request(client: aiohttp.ClientSession, t: Target, path: str,
                      payload: dict) -> Sample:
    t0 = time.perf_counter()
    try:
        async with client.post(t.base_url + path, json=payload, headers=t.headers) as r:
            if r.status != 200:
                text = await r.text()
                return Sample(False, time.perf_counter() - t0, status=r.status, error=text[:200])
            if not payload["stream"]:
                data = await r.json()
                return Sample(True, time.perf_counter() - t0, None,
                              data["usage"]["completion_tokens"], 200,
                              prompt_tokens=data["usage"]["prompt_tokens"])
            ttft = None
            tokens = prompt_tokens = 0
            async for raw in r.content:  # one SSE line at a time, as it arrives
                line = raw.decode().strip()
                if not line.startswith("data: "):
                    continue
                data = line[6:]
                if data == "[DONE]":
                    break
                ev = json.loads(data)
                if "error" in ev:
                    return Sample(False, time.perf_counter() - t0, status=200,
                                  error=str(ev["error"])[:200])
                if ttft is None and first_output(ev):
                    ttft = time.perf_counter() - t0
                if ev.get("usage"):
                    tokens = ev["usage"]["completion_tokens"]
                    prompt_tokens = ev["usage"]["prompt_tokens"]
            return Sample(True, time.perf_counter() - t0, ttft, tokens, 200,
                          prompt_tokens=prompt_tokens)
    except Exception as exc:  # noqa: BLE001 - a failed request is a data point
        return Sample(False, time.perf_counter() - t0, error=f"{type(exc).__name__}: {exc}"[:200])


def _session(limit: int) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=limit),
                                 timeout=aiohttp.ClientTimeout(total=120))


def summarize(samples: list[Sample], wall: float) -> dict:
    ok = [s for s in samples if s.ok]
    lat = [s.latency for s in ok]
    ttft = [s.ttft for s in ok if s.ttft is not None]
    out_tokens = sum(s.tokens for s in ok)
    errors = [s for s in samples if not s.ok]
    return {
        "requests": len(samples),
        "ok": len(ok),
        "errors": len(errors),
        "error_examples": sorted({f"{e.status} {e.error}" for e in errors})[:3],
        "wall_s": round(wall, 2),
        "req_per_s": round(len(ok) / wall, 3) if wall else None,
        "out_tok_per_s": round(out_tokens / wall, 1) if wall else None,
        "lat_mean_ms": round(1000 * statistics.fmean(lat), 1) if lat else None,
        "lat_p50_ms": round(1000 * pct(lat, 0.5), 1) if lat else None,
        "lat_p95_ms": round(1000 * pct(lat, 0.95), 1) if lat else None,
        "ttft_p50_ms": round(1000 * pct(ttft, 0.5), 1) if ttft else None,
        "ttft_p95_ms": round(1000 * pct(ttft, 0.95), 1) if ttft else None,
        "prompt_tokens_p50": pct([s.prompt_tokens for s in ok], 0.5) if ok else None,
    }


async def closed_loop(t: Target, w: Workload, concurrency: int, duration: float,
                      max_tokens: int) -> dict:
    samples: list[Sample] = []
    async with _session(concurrency + 4) as client:
        start = time.perf_counter()
        deadline = start + duration
        seq = iter(range(10**9))

        async def worker():
            while time.perf_counter() < deadline:
                samples.append(await one_request(
                    client, t, w.path, w.request(next(seq), max_tokens, True, raw=t.raw)))

        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - start
    return summarize(samples, wall)


async def open_loop(t: Target, w: Workload, rate: float, duration: float,
                    max_tokens: int) -> dict:
    n = max(1, int(rate * duration))
    async with _session(512) as client:
        start = time.perf_counter()
        tasks = []
        for i in range(n):
            at = start + i / rate
            delay = at - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(
                one_request(client, t, w.path, w.request(i, max_tokens, False, raw=t.raw))))
        samples = await asyncio.gather(*tasks)
        wall = time.perf_counter() - start
    res = summarize(list(samples), wall)
    res["offered_rate"] = rate
    # Requests that had to be issued late mean the generator, not the server, fell behind.
    return res


async def warm_up(t: Target, workloads: dict[str, Workload]) -> None:
    async with _session(4) as client:
        for w in workloads.values():
            for stream in (False, True):
                s = await one_request(client, t, w.path, w.request(0, 8, stream, raw=t.raw))
                if not s.ok:
                    raise RuntimeError(f"{t.name} warm-up of {w.name} failed: "
                                       f"{s.status} {s.error}")


async def _closed(t: Target, args, workloads: dict[str, Workload], name: str, c: int) -> dict:
    r = await closed_loop(t, workloads[name], c, args.closed_duration, args.closed_max_tokens)
    print(f"   {t.name} {name} c={c}: {r['req_per_s']} req/s, {r['out_tok_per_s']} tok/s, "
          f"p50 {r['lat_p50_ms']} ms, p95 {r['lat_p95_ms']} ms, "
          f"TTFT p50 {r['ttft_p50_ms']} ms, prompt {r['prompt_tokens_p50']} tokens, "
          f"errors {r['errors']} "
          f"{r['error_examples'][:1]}", flush=True)
    return r


async def _open(t: Target, args, workloads: dict[str, Workload], rate: float) -> dict:
    r = await open_loop(t, workloads[args.open_workload], rate, args.open_duration,
                        args.open_max_tokens)
    print(f"   {t.name} open {rate} req/s: achieved {r['req_per_s']}, p50 {r['lat_p50_ms']} ms, "
          f"p95 {r['lat_p95_ms']} ms, errors {r['errors']}", flush=True)
    return r


async def run_target(t: Target, args, workloads: dict[str, Workload]) -> dict:
    """One round of one target: start it, every closed-loop level and open-loop rate, stop."""
    print(f"== {t.name}: starting ({' '.join(t.cmd[:4])} ...)", flush=True)
    t.start()
    try:
        startup = await t.wait_ready(args.startup_timeout)
        print(f"   ready after {startup:.1f}s", flush=True)
        await warm_up(t, workloads)
        res = {"startup_s": round(startup, 1), "closed": {}, "open": {}}
        for name in args.workloads:
            for c in args.concurrency:
                res["closed"].setdefault(name, {})[str(c)] = await _closed(t, args, workloads,
                                                                           name, c)
        for rate in args.rates:
            res["open"][str(rate)] = await _open(t, args, workloads, rate)
            await asyncio.sleep(2)  # let queues drain between rates
        return res
    finally:
        t.stop()
        print(f"   {t.name} stopped", flush=True)


# An idle vLLM engine busy-waits for 1 s after its last message (its shared-memory queue):
# a pause longer than that between two measurements keeps the one just measured from
# taking CPU from the next.
PAUSE_S = 2.0


async def run_paired(targets: dict[str, Target], order: list[str], args,
                     workloads: dict[str, Workload]) -> list[dict]:
    """All rounds with both servers up the whole time: each measurement (a workload at a
    concurrency, an open-loop rate) is taken from one server and then the other, seconds
    apart, the order flipped every round. The host's speed drifts between windows minutes
    apart; here both sides of every ratio ran in the same window."""
    for name in order:
        print(f"== {targets[name].name}: starting", flush=True)
        targets[name].start()
    try:
        for name in order:  # started together, their start-up times say nothing
            await targets[name].wait_ready(args.startup_timeout)
        for name in order:
            await warm_up(targets[name], workloads)
        rounds = []
        for number in range(args.rounds):
            print(f"==== paired round {number + 1} of {args.rounds}", flush=True)
            turn = order if number % 2 == 0 else order[::-1]
            one = {name: {"startup_s": None, "closed": {}, "open": {}} for name in order}
            for workload in args.workloads:
                for c in args.concurrency:
                    for name in turn:
                        await asyncio.sleep(PAUSE_S)
                        one[name]["closed"].setdefault(workload, {})[str(c)] = await _closed(
                            targets[name], args, workloads, workload, c)
            for rate in args.rates:
                for name in turn:
                    await asyncio.sleep(PAUSE_S)
                    one[name]["open"][str(rate)] = await _open(targets[name], args,
                                                               workloads, rate)
            rounds.append(one)
        return rounds
    finally:
        for name in order:
            targets[name].stop()


# --------------------------------------------------------------------------------------
# Report


def highest_ok_rate(open_res: dict, threshold_ms: float) -> float | None:
    best = None
    for rate, r in sorted(open_res.items(), key=lambda kv: float(kv[0])):
        if r["errors"] == 0 and r["lat_p95_ms"] is not None and r["lat_p95_ms"] < threshold_ms:
            best = float(rate)
        else:
            break  # the first rate over the threshold ends the sweep's usable range
    return best


def _ratio(a, b):
    return f"{a / b:.2f}" if a and b else "-"


def _spread(values: list) -> str:
    """A metric over the rounds: its median, and the range when there are several."""
    values = [v for v in values if v is not None]
    if not values:
        return "-"
    middle = statistics.median(values)
    if len(values) == 1:
        return f"{middle:g}"
    return f"{middle:g} ({min(values):g}-{max(values):g})"


def _ratios(rounds: list[dict], pick) -> str:
    """Median of the per-round service/raw ratios, with their range."""
    ratios = []
    for one in rounds:
        raw, ours = pick(one["vllm"]), pick(one["service"])
        if raw and ours:
            ratios.append(round(ours / raw, 2))
    return _spread(ratios)


def report(results: dict, args) -> str:
    rounds = results["rounds"]
    if not all("vllm" in one and "service" in one for one in rounds):
        return "\n".join(json.dumps(one, indent=1) for one in rounds)
    lines = [f"{len(rounds)} interleaved rounds; each cell: median (range over rounds).\n",
             "### Closed loop (streamed; up to "
             f"{args.closed_max_tokens} tokens out, {args.closed_duration:.0f} s per level)\n",
             "| workload | concurrency | metric | raw vLLM | service | service / vLLM |",
             "|---|---:|---|---:|---:|---:|"]
    metrics = [("req_per_s", "requests/s"), ("out_tok_per_s", "output tokens/s"),
               ("lat_p50_ms", "latency p50 (ms)"), ("lat_p95_ms", "latency p95 (ms)"),
               ("ttft_p50_ms", "TTFT p50 (ms)"), ("ttft_p95_ms", "TTFT p95 (ms)"),
               ("prompt_tokens_p50", "prompt tokens"), ("errors", "errors")]
    for name in args.workloads:
        for c in args.concurrency:
            for key, label in metrics:
                def pick(target, key=key, c=str(c), name=name):
                    return target["closed"][name][c].get(key)  # older results lack some
                cells = [_spread([pick(one[n]) for one in rounds]) for n in ("vllm", "service")]
                ratio = _ratios(rounds, pick) if key != "errors" else ""
                lines.append(f"| {name} | {c} | {label} | {cells[0]} | {cells[1]} | {ratio} |")
    lines += ["", f"### Open loop ({args.open_workload}, non-streaming, "
              f"{args.open_max_tokens} tokens out, {args.open_duration:.0f} s per rate)\n",
              "| offered req/s | raw achieved | raw p50 ms | raw p95 ms | raw errors "
              "| service achieved | service p50 ms | service p95 ms | service errors "
              "| p95 service / raw |",
              "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for rate in args.rates:
        row = [f"{rate:g}"]
        for n in ("vllm", "service"):
            for key in ("req_per_s", "lat_p50_ms", "lat_p95_ms", "errors"):
                row.append(_spread([one[n]["open"][str(rate)][key] for one in rounds]))
        row.append(_ratios(rounds, lambda t, r=str(rate): t["open"][r]["lat_p95_ms"]))
        lines.append("| " + " | ".join(row) + " |")
    best = {n: _spread([one["highest_ok_rate"][n] for one in rounds])
            for n in ("vllm", "service")}
    lines += ["", f"Highest offered rate with p95 < {args.p95_threshold_ms:g} ms and no errors: "
              f"raw vLLM {best['vllm']} req/s, service {best['service']} req/s.",
              "Startup to ready (s): raw vLLM "
              f"{_spread([one['vllm']['startup_s'] for one in rounds])}, service "
              f"{_spread([one['service']['startup_s'] for one in rounds])}."]
    return "\n".join(lines)


def chart(results: dict, args, path: Path) -> str | None:
    series = {}
    for key, label in (("vllm", "raw vLLM"), ("service", "service")):
        if key in results:
            pts = [(float(r), results[key]["open"][r]["lat_p95_ms"]) for r in results[key]["open"]]
            series[label] = [(x, y) for x, y in sorted(pts) if y is not None]
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(7, 4.5))
        for label, pts in series.items():
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=label)
        ax.axhline(args.p95_threshold_ms, ls="--", color="grey")
        ax.set_xlabel("offered request rate (req/s)")
        ax.set_ylabel("p95 latency (ms)")
        ax.legend()
        fig.savefig(path, dpi=110, bbox_inches="tight")
        return "matplotlib"
    except ImportError:
        pass
    try:
        from PIL import Image, ImageDraw, ImageFont
    except ImportError:
        return None
    W, H, L, R, T, B = 760, 480, 80, 30, 40, 60
    img = Image.new("RGB", (W, H), "white")
    d = ImageDraw.Draw(img)
    font = ImageFont.load_default()
    xs = [x for pts in series.values() for x, _ in pts] or [1]
    ys = [y for pts in series.values() for _, y in pts] + [args.p95_threshold_ms]
    xmax = max(xs) * 1.05
    ymax = max(ys) * 1.1
    log_y = ymax / max(1.0, min(ys)) > 30  # latency past saturation explodes: use a log axis

    import math

    ymin = max(1.0, min(ys) / 1.5) if log_y else 0.0

    def px(x, y):
        fx = x / xmax
        if log_y:
            fy = (math.log10(max(y, ymin)) - math.log10(ymin)) / (math.log10(ymax) - math.log10(ymin))
        else:
            fy = y / ymax
        return L + fx * (W - L - R), H - B - fy * (H - T - B)

    d.rectangle([L, T, W - R, H - B], outline="black")
    # y ticks
    if log_y:
        ticks = [10**e * m for e in range(0, 7) for m in (1, 2, 5) if ymin <= 10**e * m <= ymax]
    else:
        step = 10 ** math.floor(math.log10(ymax / 5)) if ymax > 0 else 1
        step = next(s * step for s in (1, 2, 5, 10) if ymax / (s * step) <= 8)
        ticks = [i * step for i in range(0, int(ymax / step) + 1)]
    for ty in ticks:
        _, y = px(0, ty)
        d.line([L - 4, y, L, y], fill="black")
        d.line([L, y, W - R, y], fill=(230, 230, 230))
        d.text((L - 8, y - 6), f"{ty:g}", fill="black", font=font, anchor="ra")
    for tx in sorted({x for x in xs}):
        x, _ = px(tx, ymin if log_y else 0)
        d.line([x, H - B, x, H - B + 4], fill="black")
        d.text((x - 4, H - B + 8), f"{tx:g}", fill="black", font=font)
    # threshold
    _, ty = px(0, args.p95_threshold_ms)
    for x0 in range(L, W - R, 12):
        d.line([x0, ty, min(x0 + 6, W - R), ty], fill=(120, 120, 120))
    d.text((W - R - 150, ty - 14), f"p95 = {args.p95_threshold_ms:g} ms", fill=(90, 90, 90), font=font)
    colors = {"raw vLLM": (31, 119, 180), "service": (214, 39, 40)}
    for i, (label, pts) in enumerate(series.items()):
        c = colors.get(label, (0, 0, 0))
        xy = [px(x, y) for x, y in pts]
        if len(xy) > 1:
            d.line(xy, fill=c, width=2)
        for x, y in xy:
            d.ellipse([x - 4, y - 4, x + 4, y + 4], fill=c)
        d.rectangle([L + 12, T + 10 + 16 * i, L + 24, T + 20 + 16 * i], fill=c)
        d.text((L + 30, T + 9 + 16 * i), label, fill="black", font=font)
    d.text((W // 2 - 80, H - 25), "offered request rate (req/s)", fill="black", font=font)
    d.text((10, 10), "p95 latency (ms)" + (", log scale" if log_y else ""), fill="black", font=font)
    img.save(path)
    return "Pillow"


def draw_charts(results: dict, args) -> str:
    """Both charts beside args.chart; says where they went, or that they were not drawn."""
    latency_path, workloads_path = Path(args.chart), workloads_chart_path(Path(args.chart))
    latency = chart(results["rounds"][-1], args, latency_path)
    workloads = draw_workloads_chart(results, workloads_path)
    return "\n".join([
        "latency chart (last round): "
        + (f"{latency_path} ({latency})" if latency else "not drawn (no plotting library)"),
        "workloads chart (all rounds): "
        + (f"{workloads_path} ({workloads})" if workloads
           else "not drawn (no plotting library, or no round measured both targets)")])


def redraw_charts(results_path: Path, args) -> None:
    """The charts of an earlier run, with the p95 threshold it ran with."""
    results = json.loads(results_path.read_text())
    args.p95_threshold_ms = results.get("config", {}).get("p95_threshold_ms",
                                                          args.p95_threshold_ms)
    print(draw_charts(results, args))


async def get_prompt_ids(text: str) -> list[int]:
    """The service's rendering of one user turn (GPT4 Correct), computed offline with the
    service's own renderer so both targets get identical token ids."""
    sys.path.insert(0, str(ROOT))
    try:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(str(ROOT / ".models" / "openchat-dev"))
        ids = tok.encode(f"GPT4 Correct User: {text}<|end_of_turn|>GPT4 Correct Assistant:",
                         add_special_tokens=True)
        return list(ids)
    except Exception as exc:  # noqa: BLE001
        raise SystemExit(f"cannot tokenize the prompt: {exc}") from None


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_target_arguments(p, startup_timeout=300)
    p.add_argument("--only", choices=["vllm", "service"], action="append")
    p.add_argument("--workloads", nargs="+", choices=WORKLOADS, default=WORKLOADS,
                   help="closed-loop workloads (load/workloads.py)")
    p.add_argument("--open-workload", choices=WORKLOADS, default="completion_ids")
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 32])
    p.add_argument("--closed-duration", type=float, default=15)
    p.add_argument("--closed-max-tokens", type=int, default=64)
    p.add_argument("--rates", type=float, nargs="+", default=[5, 10, 15, 20, 25, 30])
    p.add_argument("--open-duration", type=float, default=10)
    p.add_argument("--open-max-tokens", type=int, default=32)
    p.add_argument("--p95-threshold-ms", type=float, default=800)
    p.add_argument("--prompt", default=DEFAULT_PROMPT_TEXT)
    p.add_argument("--out", default=str(ROOT / "load" / "results.json"))
    p.add_argument("--chart", default=str(ROOT / "docs" / "benchmarks-latency.png"))
    p.add_argument("--rounds", type=int, default=3,
                   help="interleaved rounds; the report gives the median of per-round ratios")
    p.add_argument("--paired", action="store_true",
                   help="both servers up at once; every measurement alternates between them")
    p.add_argument("--quick", action="store_true", help="c=1,4; rates 1,4,8; 8 s each; 1 round")
    p.add_argument("--chart-only", metavar="RESULTS_JSON",
                   help="redraw the charts (to --chart) from a results file; runs nothing")
    args = p.parse_args()
    if args.chart_only:
        redraw_charts(Path(args.chart_only), args)
        return
    if args.quick:
        args.concurrency, args.closed_duration = [1, 4], 8
        args.rates, args.open_duration, args.rounds = [1, 4, 8], 8, 1

    prompt = asyncio.run(get_prompt_ids(args.prompt))
    workloads = make_workloads(prompt, MODEL_ID)
    tmp = Path(tempfile.mkdtemp(prefix="openchat-bench-"))
    targets = make_targets(args, tmp)
    order = args.only or ["vllm", "service"]
    results: dict = {
        "config": {k: v for k, v in vars(args).items()},
        "prompt_tokens": len(prompt),
        "machine": {"cpus": len(os.sched_getaffinity(0)), "omp_bind": _cpu_bind()},
        "logs": str(tmp),
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }

    def _stop_all(*_):
        for t in targets.values():
            t.stop()
        raise SystemExit(130)

    # Interleaved rounds (raw, service, raw, service, ...): what the machine does meanwhile
    # (another tenant, a thermal step) weighs on both alike, and the spread shows.
    signal.signal(signal.SIGTERM, _stop_all)
    results["rounds"] = []
    try:
        if args.paired:
            results["rounds"] = asyncio.run(run_paired(targets, order, args, workloads))
        else:
            for number in range(1, args.rounds + 1):
                print(f"==== round {number} of {args.rounds}", flush=True)
                results["rounds"].append({name: asyncio.run(run_target(targets[name], args,
                                                                        workloads))
                                          for name in order})
    finally:
        for t in targets.values():
            t.stop()
    for one in results["rounds"]:
        one["highest_ok_rate"] = {
            n: highest_ok_rate(one[n]["open"], args.p95_threshold_ms) for n in order}
    Path(args.out).write_text(json.dumps(results, indent=2))
    text = report(results, args)
    print()
    print(text)
    print(f"\nresults: {args.out}; server logs: {tmp}")
    print(draw_charts(results, args))


if __name__ == "__main__":
    main()
