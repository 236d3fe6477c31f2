"""Where the engine's processes spend a closed loop: each one's CPU time and its time
runnable but waiting for a CPU, read from the kernel (/proc/<pid>/task/*/schedstat).

Against a running service (`make serve`), one workload of load/workloads.py at one
concurrency. It says which process waits for a core under load, the EngineCore at idle
priority or beside the compute worker (engine.cpu_engine_core; docs/deployment.md, CPU
placement). Times are summed over a process's threads and include busy-waiting: the
compute worker and the EngineCore spin on their shared-memory queue between messages.

Usage:  .venv/bin/python load/core_time.py                       # json_schema, c=32, 12 s
        .venv/bin/python load/core_time.py --workload chat --concurrency 1
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import time
from pathlib import Path

import psutil
from bench import (DEFAULT_PROMPT_TEXT, MODEL_ID, WORKLOADS, Target, closed_loop,
                   get_prompt_ids, schedstat)
from workloads import make_workloads

ENGINE_PROCESSES = {"EngineCore": "VLLM::EngineCore", "compute worker": "VLLM::Worker"}


def _service_pids() -> dict[str, int]:
    """The service's engine processes, found among its HTTP worker's descendants (a bare
    `vllm serve` running beside it has processes of the same names), and the worker."""
    worker = psutil.Process(int(subprocess.check_output(
        ["pgrep", "-f", "_bentoml_impl.worker"]).split()[0]))
    descendants = worker.children(recursive=True)
    pids = {name: next(p.pid for p in descendants if marker in " ".join(p.cmdline()))
            for name, marker in ENGINE_PROCESSES.items()}
    return pids | {"HTTP worker": worker.pid}


async def measure(args) -> dict:
    prompt = await get_prompt_ids(DEFAULT_PROMPT_TEXT)
    workload = make_workloads(prompt, MODEL_ID)[args.workload]
    target = Target("service", args.base_url, {"Authorization": f"Bearer {args.key}"}, [], {},
                    "/readyz", Path("/dev/null"))
    await closed_loop(target, workload, args.concurrency, 3, 64)  # warm-up
    pids = _service_pids()
    before = {name: schedstat(pid) for name, pid in pids.items()}
    started = time.monotonic()
    load = await closed_loop(target, workload, args.concurrency, args.duration, 64)
    wall = time.monotonic() - started
    after = {name: schedstat(pid) for name, pid in pids.items()}
    return {"workload": args.workload, "concurrency": args.concurrency, "wall_s": round(wall, 1),
            "req_per_s": load["req_per_s"],
            "processes": {name: {"on_cpu_s": round(after[name][0] - before[name][0], 2),
                                 "waiting_s": round(after[name][1] - before[name][1], 2)}
                          for name in pids}}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base-url", default="http://127.0.0.1:11402")
    p.add_argument("--key", default="oc-dev-admin-key-for-local-use-only")
    p.add_argument("--workload", choices=WORKLOADS, default="json_schema")
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--duration", type=float, default=12)
    print(json.dumps(asyncio.run(measure(p.parse_args()))))


if __name__ == "__main__":
    main()
