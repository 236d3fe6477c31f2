"""Soak test: the service at saturation for minutes, with no failures and no memory growth.

Starts the service the way load/bench.py does (`bentoml serve service:OpenChat` on the dev
model, admin key, SQL/keys/Chroma in a temporary directory), creates API keys through
`POST /v1/admin/keys` (normal keys with limits out of the way, and one tight key with a low
rpm and a concurrency of 1), then runs locust headless with load/locustfile.py: the
realistic mix (short, long, streamed, JSON and tool-call chats) from enough users that the
engine is never idle, plus TightKeyUser traffic on the tight key, whose 429s are expected.

Every few seconds it samples, with psutil, the memory of the BentoML worker process and of
vLLM's EngineCore process and of its model runner (VLLM::Worker, which holds the weights and
the KV cache) (RSS, and USS/PSS from /proc/<pid>/smaps_rollup), and from the
service's /metrics the request counters by status and the engine's running/waiting gauges.

Verdict (exit code 1 if it fails):
  * failures: any request that is not a valid 2xx, except the tight key's checked 429s (a
    timeout, connection error, truncated stream or malformed body counts), and any 5xx in
    the service's own counters; the tight key must have produced 429s;
  * restarts: the worker's and the EngineCore's pids must not change;
  * memory: for each process, the least-squares slope of RSS over the second half of the
    run must stay under --max-slope MB/min (default 1: 1.4 GB a day, a leak that would
    exhaust a replica's headroom within days; 20 times the slope's noise seen here, while
    the first minutes' warm-up grows faster, so judge runs of 10 minutes or more). RSS, not
    USS/PSS: those move when other processes on the host map or unmap the same libraries.

Usage:  .venv/bin/python load/soak.py                 # 10 minutes at saturation
        .venv/bin/python load/soak.py --minutes 2     # smoke run
Writes load/soak.json (config, samples, locust stats, summary); locust's CSVs and the
server log stay in the temporary directory named in the output.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import psutil
from prometheus_client.parser import text_string_to_metric_families

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[1])]
from bench import ROOT, VENV_BIN, make_targets  # noqa: E402 - load/ is not a package
from tests.ports import free_port  # noqa: E402

EXPECTED_429 = "tight 429 (expected)"  # the request name TightKeyUser gives a checked 429
MB = 1024 * 1024


# --------------------------------------------------------------------------------------
# Keys


def create_keys(base_url: str, admin: dict, args) -> tuple[list[str], str]:
    """Normal keys with limits out of the way, and the tight key; returns their secrets."""
    generous = {"rpm": 10_000_000, "tpm": 2_000_000_000, "max_concurrency": 10_000}
    tight = {"rpm": args.tight_rpm, "max_concurrency": args.tight_concurrency}
    with httpx.Client(base_url=base_url, headers=admin, timeout=30) as client:
        def create(name: str, limits: dict) -> str:
            r = client.post("/v1/admin/keys", json={"name": name, "scopes": ["inference"],
                                                    **limits})
            if r.status_code != 201:
                raise RuntimeError(f"creating key {name}: {r.status_code} {r.text[:200]}")
            return r.json()["secret"]

        normal = [create(f"soak-normal-{i}", generous) for i in range(args.keys)]
        return normal, create("soak-tight", tight)


# --------------------------------------------------------------------------------------
# Sampling


PROCESSES = ("worker", "engine_core", "model_runner")


def find_processes(root_pid: int) -> dict[str, psutil.Process]:
    """Under root_pid (`bentoml serve`): vLLM's EngineCore, its parent the BentoML worker
    (HTTP, routes, AsyncLLM's frontend) and its child VLLM::Worker, which holds the model
    and the KV cache (vLLM's CPU executor runs the model in its own process)."""
    try:
        tree = psutil.Process(root_pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return {}
    found: dict[str, psutil.Process] = {}
    for proc in tree:
        try:
            title = f"{proc.name()} {' '.join(proc.cmdline())}"
            if "EngineCore" in title:
                found["engine_core"], found["worker"] = proc, proc.parent()
            elif "VLLM::Worker" in title:
                found.setdefault("model_runner", proc)
        except psutil.NoSuchProcess:
            continue
    return found


def tree_rss_mb(root_pid: int) -> float | None:
    try:
        root = psutil.Process(root_pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return None
    total = 0
    for proc in procs:
        try:
            total += proc.memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return round(total / MB, 1)


def memory(proc: psutil.Process | None) -> dict | None:
    if proc is None:
        return None
    try:
        info = proc.memory_full_info()  # smaps_rollup: a few ms even for a large process
    except psutil.Error:
        return None
    return {"pid": proc.pid, "rss_mb": round(info.rss / MB, 1),
            "uss_mb": round(info.uss / MB, 1), "pss_mb": round(getattr(info, "pss", 0) / MB, 1)}


def service_counters(client: httpx.Client) -> dict:
    """openchat_requests by status (the /metrics scrapes left out), completion tokens, and
    the engine's running and waiting requests, from the service's /metrics."""
    out: dict = {"by_status": {}, "completion_tokens": 0.0}
    try:
        text = client.get("/metrics").text
    except httpx.HTTPError as exc:
        return {"error": f"{type(exc).__name__}: {exc}"}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == "openchat_requests_total" and s.labels.get("route") != "/metrics":
                status = s.labels.get("status", "?")
                out["by_status"][status] = out["by_status"].get(status, 0) + int(s.value)
            elif s.name == "openchat_completion_tokens_total":
                out["completion_tokens"] += s.value
            elif s.name in ("vllm:num_requests_running", "vllm:num_requests_waiting"):
                key = s.name.split(":")[1].replace("num_requests_", "engine_")
                out[key] = out.get(key, 0) + s.value
    return out


# --------------------------------------------------------------------------------------
# Analysis


def slope_per_min(points: list[tuple[float, float]]) -> float | None:
    """Least-squares slope of (seconds, MB) points, in MB per minute."""
    if len(points) < 3:
        return None
    n = len(points)
    mx = sum(t for t, _ in points) / n
    my = sum(v for _, v in points) / n
    sxx = sum((t - mx) ** 2 for t, _ in points)
    if not sxx:
        return None
    return 60 * sum((t - mx) * (v - my) for t, v in points) / sxx


def memory_verdict(samples: list[dict], proc: str, warmup_s: float, args) -> dict:
    pts = [(s["t"], s[proc]) for s in samples if s.get(proc)]
    if not pts:
        return {"ok": False, "reason": "never sampled"}
    end_t = pts[-1][0]
    half = [(t, m["rss_mb"]) for t, m in pts if t >= end_t / 2]
    warm = next((m for t, m in pts if t >= warmup_s), pts[0][1])
    slope = slope_per_min(half)
    uss_slope = slope_per_min([(t, m["uss_mb"]) for t, m in pts if t >= end_t / 2])
    res = {
        "rss_after_warmup_mb": warm["rss_mb"], "rss_end_mb": pts[-1][1]["rss_mb"],
        "rss_max_mb": max(m["rss_mb"] for _, m in pts),
        "uss_after_warmup_mb": warm["uss_mb"], "uss_end_mb": pts[-1][1]["uss_mb"],
        "rss_slope_second_half_mb_per_min": None if slope is None else round(slope, 3),
        "uss_slope_second_half_mb_per_min": None if uss_slope is None else round(uss_slope, 3),
        "max_slope_mb_per_min": args.max_slope,
        "pids": sorted({m["pid"] for _, m in pts}),
    }
    res["ok"] = slope is not None and slope <= args.max_slope and len(res["pids"]) == 1
    if slope is None:
        res["reason"] = "too few samples in the second half"
    elif len(res["pids"]) > 1:
        res["reason"] = f"the process was replaced (pids {res['pids']})"
    elif slope > args.max_slope:
        res["reason"] = f"RSS grows {slope:.2f} MB/min > {args.max_slope} MB/min"
    return res


def read_locust(prefix: Path) -> dict:
    """Locust's aggregated stats per request name, and its failures by kind."""
    stats, failures = {}, []
    with open(f"{prefix}_stats.csv") as fh:
        for row in csv.DictReader(fh):
            stats[f"{row['Type']} {row['Name']}".strip()] = {
                "requests": int(row["Request Count"]), "failures": int(row["Failure Count"]),
                "p50_ms": _num(row["50%"]), "p95_ms": _num(row["95%"]),
                "max_ms": _num(row["Max Response Time"]), "rps": _num(row["Requests/s"])}
    with open(f"{prefix}_failures.csv") as fh:
        for row in csv.DictReader(fh):
            failures.append({"request": f"{row['Method']} {row['Name']}",
                             "error": row["Error"], "count": int(row["Occurrences"])})
    return {"stats": stats, "failures": failures}


def _num(value: str) -> float | None:
    try:
        return float(value)
    except ValueError:
        return None


def summarize(loc: dict, samples: list[dict], wall_s: float, warmup_s: float, args,
              log_problems: list[str]) -> dict:
    # Requests are locust's own entries: the "STREAM" ones re-count streams, the aggregate
    # counts everything once more.
    entries = {k: v for k, v in loc["stats"].items()
               if not k.startswith("STREAM ") and k.strip() != "Aggregated"}
    total = sum(v["requests"] for v in entries.values())
    failed = sum(v["failures"] for v in entries.values())
    expected_429 = entries.get(f"POST {EXPECTED_429}", {}).get("requests", 0)
    tight_ok = entries.get("POST tight chat", {})
    first, last = samples[0].get("service", {}), samples[-1].get("service", {})
    server_5xx = sum(n for status, n in last.get("by_status", {}).items()
                     if status.startswith("5") or status == "0")
    tokens = last.get("completion_tokens", 0) - first.get("completion_tokens", 0)
    loaded = [s["service"] for s in samples  # after warm-up, before locust's stop
              if warmup_s <= s["t"] <= args.minutes * 60 and "engine_running" in s["service"]]
    busy = [s["engine_running"] for s in loaded]
    waiting = [s.get("engine_waiting", 0) for s in loaded]
    mem = {p: memory_verdict(samples, p, warmup_s, args) for p in PROCESSES}
    problems = []
    if failed:
        problems.append(f"{failed} failed requests")
    if server_5xx:
        problems.append(f"{server_5xx} responses with a 5xx status (or none) in the "
                        "service's own counters")
    if not expected_429:
        problems.append("the tight key was never refused with 429: its limits did not act")
    problems += [f"{p}: {m['reason']}" for p, m in mem.items() if not m["ok"]]
    return {
        "verdict": "PASS" if not problems else "FAIL",
        "problems": problems,
        "wall_s": round(wall_s, 1),
        "requests": total,
        "successes": total - failed - expected_429,
        "tight_key_successes": tight_ok.get("requests", 0) - tight_ok.get("failures", 0),
        "deliberate_429": expected_429,
        "failures": failed,
        "failures_by_kind": loc["failures"],
        "req_per_s": round(total / wall_s, 2),
        "successful_req_per_s": round((total - failed - expected_429) / wall_s, 2),
        "completion_tokens_per_s": round(tokens / wall_s, 1),
        "service_requests_by_status": last.get("by_status"),
        "engine_running_mean": round(sum(busy) / len(busy), 1) if busy else None,
        "engine_running_min": min(busy) if busy else None,
        "engine_waiting_mean": round(sum(waiting) / len(waiting), 1) if waiting else None,
        "memory": mem,
        "all_processes_rss_mb": _tree_summary(samples, warmup_s),
        "server_log_problems": log_problems[:20],
        "server_log_problem_count": len(log_problems),
    }


def _tree_summary(samples: list[dict], warmup_s: float) -> dict:
    """RSS of every process of the service together (informational: shared pages count
    once per process)."""
    pts = [(s["t"], s["tree_rss_mb"]) for s in samples if s.get("tree_rss_mb")]
    if not pts:
        return {}
    slope = slope_per_min([(t, v) for t, v in pts if t >= pts[-1][0] / 2])
    return {"after_warmup": next((v for t, v in pts if t >= warmup_s), pts[0][1]),
            "end": pts[-1][1], "max": max(v for _, v in pts),
            "slope_second_half_mb_per_min": None if slope is None else round(slope, 3)}


def log_problems(log: Path) -> list[str]:
    """Lines of the server log that report errors (tracebacks and ERROR/CRITICAL records)."""
    pattern = re.compile(r"Traceback|\bERROR\b|\bCRITICAL\b|\"level\": \"(ERROR|CRITICAL)\"")
    try:
        lines = log.read_text(errors="replace").splitlines()
    except OSError:
        return []
    return [line[:300] for line in lines if pattern.search(line)]


# --------------------------------------------------------------------------------------
# Run


def run(args) -> int:
    tmp = Path(tempfile.mkdtemp(prefix="openchat-soak-"))
    args.port = args.port or free_port()  # others may run services on this machine too
    target = make_targets(argparse.Namespace(model=args.model, vllm_port=0,
                                             service_port=args.port), tmp)["service"]
    print(f"== starting the service (logs in {tmp})", flush=True)
    target.start()
    locust = None

    def _stop(*_):
        if locust and locust.poll() is None:
            os.killpg(locust.pid, signal.SIGTERM)
        target.stop()
        raise SystemExit(130)

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    try:
        print(f"   ready after {asyncio.run(target.wait_ready(args.startup_timeout)):.0f}s",
              flush=True)
        normal, tight = create_keys(target.base_url, target.headers, args)
        procs = find_processes(target.proc.pid)
        if "worker" not in procs:
            raise RuntimeError("no EngineCore process found under the service")
        print("   " + ", ".join(f"{role} pid {p.pid}" for role, p in procs.items()) + "; "
              f"{args.keys} normal keys, tight key rpm={args.tight_rpm} "
              f"concurrency={args.tight_concurrency}", flush=True)
        prefix = tmp / "locust"
        env = dict(os.environ, OPENCHAT_API_KEY=",".join(normal), OPENCHAT_TIGHT_API_KEY=tight,
                   OPENCHAT_TIGHT_USERS=str(args.tight_users),
                   OPENCHAT_LOAD_TIMEOUT=str(args.request_timeout))
        users = args.users + args.tight_users
        cmd = [str(VENV_BIN / "locust"), "-f", str(ROOT / "load" / "locustfile.py"),
               "--headless", "-u", str(users), "-r", str(args.spawn_rate),
               "-t", f"{int(args.minutes * 60)}s", "--stop-timeout", str(int(args.request_timeout)),
               "--host", target.base_url, "--csv", str(prefix), "--only-summary",
               "--loglevel", "WARNING"]
        print(f"== locust: {users} users ({args.tight_users} on the tight key) for "
              f"{args.minutes:g} min", flush=True)
        started = time.monotonic()
        with open(tmp / "locust.log", "wb") as out:
            locust = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out,
                                      stderr=subprocess.STDOUT, start_new_session=True)
        samples = []
        with httpx.Client(base_url=target.base_url, headers=target.headers, timeout=30) as client:
            while True:
                t = time.monotonic() - started
                procs = find_processes(target.proc.pid)
                samples.append({"t": round(t, 1),
                                **{role: memory(procs.get(role)) for role in PROCESSES},
                                "tree_rss_mb": tree_rss_mb(target.proc.pid),
                                "service": service_counters(client)})
                if len(samples) % max(1, int(60 / args.interval)) == 1:
                    s = samples[-1]
                    print(f"   {t / 60:5.1f} min  RSS worker {_rss(s['worker'])}, EngineCore "
                          f"{_rss(s['engine_core'])}, model runner {_rss(s['model_runner'])}, "
                          f"all {s['tree_rss_mb']} MB; requests {s['service'].get('by_status')}  "
                          f"engine running {s['service'].get('engine_running')} waiting "
                          f"{s['service'].get('engine_waiting')}", flush=True)
                if locust.poll() is not None:
                    break
                time.sleep(args.interval)
        wall = time.monotonic() - started
        loc = read_locust(prefix)
        warmup_s = args.warmup_minutes * 60 if args.warmup_minutes is not None \
            else min(120.0, args.minutes * 60 / 5)
        summary = summarize(loc, samples, wall, warmup_s, args, log_problems(target.log))
    finally:
        if locust and locust.poll() is None:
            os.killpg(locust.pid, signal.SIGTERM)
        target.stop()
    Path(args.out).write_text(json.dumps({
        "config": vars(args), "logs": str(tmp), "locust_cmd": cmd,
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - wall)),
        "machine": {"cpus": len(os.sched_getaffinity(0)), "load_avg": os.getloadavg()},
        "summary": summary, "locust": loc["stats"], "samples": samples}, indent=1))
    print_summary(summary)
    print(f"\nwritten: {args.out}; locust CSVs and server log: {tmp}")
    return 0 if summary["verdict"] == "PASS" else 1


def _rss(m: dict | None) -> str:
    return f"{m['rss_mb']:.0f} MB" if m else "-"


def print_summary(s: dict) -> None:
    why = f" ({'; '.join(s['problems'])})" if s["problems"] else ""
    print(f"\n== verdict: {s['verdict']}{why}")
    print(f"   {s['requests']} requests in {s['wall_s']:.0f} s ({s['req_per_s']} req/s): "
          f"{s['successes']} succeeded, {s['deliberate_429']} deliberate 429s "
          f"(tight key also served {s['tight_key_successes']}), {s['failures']} failed")
    print(f"   {s['successful_req_per_s']} successful req/s, {s['completion_tokens_per_s']} "
          f"completion tokens/s; engine running mean {s['engine_running_mean']} "
          f"(min {s['engine_running_min']}), waiting mean {s['engine_waiting_mean']}")
    for f in s["failures_by_kind"]:
        print(f"   failure x{f['count']}: {f['request']}: {f['error'][:200]}")
    for proc, m in s["memory"].items():
        if "rss_end_mb" not in m:
            print(f"   {proc}: {m.get('reason')}")
            continue
        print(f"   {proc}: RSS after warm-up {m['rss_after_warmup_mb']} MB, "
              f"end {m['rss_end_mb']} MB, max {m['rss_max_mb']} MB, slope (2nd half) "
              f"{m['rss_slope_second_half_mb_per_min']} MB/min "
              f"[USS {m['uss_after_warmup_mb']} -> {m['uss_end_mb']} MB, "
              f"{m['uss_slope_second_half_mb_per_min']} MB/min] {'ok' if m['ok'] else 'FAIL'}")
    tree = s["all_processes_rss_mb"]
    if tree:
        print(f"   all processes: RSS after warm-up {tree['after_warmup']} MB, "
              f"end {tree['end']} MB, slope (2nd half) "
              f"{tree['slope_second_half_mb_per_min']} MB/min")
    print(f"   server log: {s['server_log_problem_count']} error lines")
    for line in s["server_log_problems"][:5]:
        print(f"     {line}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, default=10, help="length of the load (default 10)")
    p.add_argument("--users", type=int, default=80,
                   help="mix users on the normal keys (default 80: more requests than the "
                        "engine's 64 sequences, so some always wait)")
    p.add_argument("--spawn-rate", type=float, default=10)
    p.add_argument("--keys", type=int, default=2, help="normal keys, shared by the users")
    p.add_argument("--tight-users", type=int, default=2)
    p.add_argument("--tight-rpm", type=int, default=6)
    p.add_argument("--tight-concurrency", type=int, default=1)
    p.add_argument("--request-timeout", type=float, default=120,
                   help="seconds without a byte before a request fails (and locust's stop timeout)")
    p.add_argument("--interval", type=float, default=5, help="seconds between samples")
    p.add_argument("--warmup-minutes", type=float, default=None,
                   help="'after warm-up' memory is read here "
                        "(default: a fifth of the run, at most 2)")
    p.add_argument("--max-slope", type=float, default=1.0,
                   help="MB/min of RSS growth over the second half that counts as steady "
                        "growth, per process (default 1; runs under ~10 minutes may still "
                        "be warming up; see docs/benchmarks.md)")
    p.add_argument("--model", default=".models/openchat-dev")
    p.add_argument("--port", type=int, default=0, help="default: a free port")
    p.add_argument("--startup-timeout", type=float, default=300)
    p.add_argument("--out", default=str(ROOT / "load" / "soak.json"))
    sys.exit(run(p.parse_args()))


if __name__ == "__main__":
    main()
