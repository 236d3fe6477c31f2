"""What OpenChat-3.5 itself costs on this CPU, measured without its weights.

No real weights can be downloaded here, but the cost of a decode step depends only on the
model's shape, not on its values. So this builds random-weight models with OpenChat-3.5's
exact shape (Mistral-7B: hidden 4096, MLP 14336, 32 heads, 8 KV heads, vocabulary 32002)
and only a few of its 32 layers, runs each in vLLM's offline engine with the service's CPU
settings (bf16, OpenMP threads bound to the engine cores), and times:

  * a decode step at several batch sizes, from the engine's own per-request timestamps
    (first to last token over the N steps between; ignore_eos, so every sequence runs all
    N steps, and the whole batch prefilled in one step before them);
  * what top_p 0.95 adds to a step (a full-vocabulary sort per sequence: vLLM's own
    filter function, timed apart from any model), to weigh it against a real model's step
    (--sampling runs the models with top_p or min_p too);
  * the prefill of the batch's prompts (first scheduled to last first token).

These are wall-clock times: run it on a quiet machine (another process on the engine's
core shows up directly; neither CPU time nor thread time was steadier when tried, they
grew up to 5x under load, so the figure of record is the quickest of three runs on an idle
machine, its load average recorded in the JSON).

A step's time is linear in the layer count (the layers are identical; the embedding, the
final norm, the 32002-wide output projection and the sampler are paid once), so a
least-squares line through the measured layer counts extrapolates to all 32 layers. Then
the memory-bandwidth floor: a batch-1 decode step reads every weight once (14.2 GB in
bf16, the embedding aside), so no step can be faster than weights / bandwidth (a torch
sum and copy on the same cores). Each model's batch-1 step is checked against it, with the
threads that really computed (CPU time per thread, read in the engine's process).

Usage:  .venv/bin/python load/capacity.py                    # ~12 minutes; -> load/capacity.json
        .venv/bin/python load/capacity.py --layers 1 2 --batches 1 8 --threads 1
The checkpoints go to .models/capacity-L<n> (1.1-3.9 GB each; reused by later runs).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import provenance  # noqa: E402
from openchat.devmodel import OPENCHAT_7B_SHAPE, build_dev_model  # noqa: E402

LAYERS_FULL = OPENCHAT_7B_SHAPE.layers
# Sampling filters at temperature 0.7: none, the presets' top_p (a full-vocabulary sort per
# sequence and step on the CPU backend) and min_p (one softmax and a comparison, no sort).
SAMPLING = {"none": {"top_p": 1.0}, "top_p=0.95": {"top_p": 0.95},
            "min_p=0.05": {"min_p": 0.05}}


def step_read_bytes(layers: int) -> int:
    """bf16 bytes a batch-1 decode step reads: every layer's weights and the output
    projection (the embedding is only indexed, one row per token)."""
    s = OPENCHAT_7B_SHAPE
    return weight_bytes(layers) - 2 * 32002 * s.hidden


def weight_bytes(layers: int) -> int:
    """bf16 bytes of an OpenChat-shaped model with `layers` layers (embedding and output
    projection untied, as in the checkpoint)."""
    s = OPENCHAT_7B_SHAPE
    head_dim = s.hidden // s.heads
    attention = s.hidden * head_dim * (2 * s.heads + 2 * s.kv_heads)  # q, o, k, v
    mlp = 3 * s.hidden * s.intermediate  # gate, up, down
    per_layer = attention + mlp + 2 * s.hidden  # two norms
    vocab = 32002
    return 2 * (layers * per_layer + 2 * vocab * s.hidden + s.hidden)


# --------------------------------------------------------------------------------------
# One model, in a child process (a fresh engine per model and thread count)


def measure_model(path: str, cpus: str, batches: list[int], steps: int,
                  prompt_len: int, sampling_names: list[str]) -> dict:
    os.environ["VLLM_CPU_OMP_THREADS_BIND"] = cpus
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "4")
    # One process: the engine's busy-waiting core process would otherwise compete with
    # its own compute thread for a core (docs/deployment.md, CPU placement).
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    import random
    import statistics

    import torch

    # vLLM binds its OpenMP threads in its multiprocess worker only; run in this process,
    # the engine would compute on a thread per core of the host (two threads on both
    # cores, measured: the "one thread" figures were two). So bind this process first.
    cores = sorted(int(c) for c in cpus.split(","))
    os.sched_setaffinity(0, cores)
    torch.set_num_threads(len(cores))
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    # Every prompt of a batch prefilled in one step, so the decode steps that follow are
    # the batch's alone; the engine's per-request timestamps then time them exactly.
    llm = LLM(model=path, dtype="bfloat16", max_model_len=2048, max_num_seqs=max(batches),
              max_num_batched_tokens=max(2048, max(batches) * prompt_len),
              enable_prefix_caching=False, seed=0, disable_log_stats=False)
    rng = random.Random(0)

    def run(n: int, steps: int, sampling: dict) -> tuple[float, float]:
        """(decode step ms, prefill ms) of a batch of n distinct random prompts."""
        prompts = [TokensPrompt(prompt_token_ids=[1] + [rng.randrange(100, 32000)
                                                        for _ in range(prompt_len - 1)])
                   for _ in range(n)]
        params = SamplingParams(max_tokens=1 + steps, ignore_eos=True, temperature=0.7,
                                seed=0, **sampling)
        stats = [out.metrics for out in llm.generate(prompts, params, use_tqdm=False)]
        step = statistics.median((m.last_token_ts - m.first_token_ts) / steps for m in stats)
        prefill = max(m.first_token_ts for m in stats) - min(m.scheduled_ts for m in stats)
        return 1000 * step, 1000 * prefill

    run(1, 4, {})  # warm-up: first-call allocations and kernels
    # The pool size torch reports; busy_threads() below says which threads really worked.
    out: dict = {"prefill_ms": {}, "step_ms": {}, "torch_threads": torch.get_num_threads()}
    for b in batches:
        for name in sampling_names:
            # The quickest of three runs: what anything else takes from the core only adds.
            step, prefill = min(run(b, steps, SAMPLING[name]) for _ in range(3))
            out["step_ms"][f"{b}@{name}"] = round(step, 2)
            if name == "none":
                out["prefill_ms"][str(b)] = round(prefill, 1)
        print(f"   batch {b}: step ms " + ", ".join(
            f"{name} {out['step_ms'][f'{b}@{name}']}" for name in sampling_names)
            + f"; prefill of {b} x {prompt_len} tokens {out['prefill_ms'][str(b)]} ms",
            file=sys.stderr, flush=True)
    out["busy_threads"] = busy_threads()
    return out


def busy_threads(min_cpu_s: float = 1.0) -> list[dict]:
    """This process's threads that used at least `min_cpu_s` of CPU, with their cores:
    how many threads really computed (torch reports its pool size, not who worked)."""
    tick = os.sysconf("SC_CLK_TCK")
    found = []
    for tid in os.listdir("/proc/self/task"):
        try:
            fields = Path(f"/proc/self/task/{tid}/stat").read_text().rsplit(")", 1)[1].split()
            cpus = sorted(os.sched_getaffinity(int(tid)))
        except OSError:  # the thread ended meanwhile
            continue
        cpu_s = (int(fields[11]) + int(fields[12])) / tick  # utime + stime
        if cpu_s >= min_cpu_s:
            name = Path(f"/proc/self/task/{tid}/comm").read_text().strip()
            found.append({"name": name, "cpu_s": round(cpu_s, 1), "cores": cpus})
    return sorted(found, key=lambda t: -t["cpu_s"])


def memory_bandwidth(threads: int, gib: float = 2.0) -> dict:
    """GB/s of a large copy (read + write) and a large sum (read) on `threads` threads."""
    import torch

    torch.set_num_threads(threads)
    n = int(gib * 2**30 / 4)
    a = torch.ones(n, dtype=torch.float32)
    b = torch.empty_like(a)
    best_copy = best_read = float("inf")
    for _ in range(5):
        t0 = time.perf_counter()
        b.copy_(a)
        best_copy = min(best_copy, time.perf_counter() - t0)
        t0 = time.perf_counter()
        a.sum()
        best_read = min(best_read, time.perf_counter() - t0)
    size = n * 4
    return {"copy_gbps": round(2 * size / best_copy / 1e9, 1),
            "read_gbps": round(size / best_read / 1e9, 1)}


def top_p_cost(batches: list[int], threads: int = 1) -> dict[str, float]:
    """ms per step that vLLM's top_p filter (a full sort of the 32002 logits of every
    sequence; its own function, as the CPU sampler calls it) adds at each batch size,
    apart from any model: the median of 30 runs."""
    import statistics

    import torch
    from vllm.v1.sample.ops.topk_topp_sampler import apply_top_k_top_p

    torch.set_num_threads(threads)
    out = {}
    for b in batches:
        logits, p = torch.randn(b, 32002), torch.full((b,), 0.95)
        times = []
        for _ in range(30):
            work = logits.clone()
            t0 = time.perf_counter()
            apply_top_k_top_p(work, None, p)
            times.append(time.perf_counter() - t0)
        out[str(b)] = round(1000 * statistics.median(times), 2)
    return out


# --------------------------------------------------------------------------------------
# The model: fit, extrapolate, report


def fit_line(xs: list[float], ys: list[float]) -> tuple[float, float]:
    """Least squares y = a + b x."""
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    b = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx if sxx else 0.0
    return my - b * mx, b


def extrapolate(runs: dict, key: str, field: str = "step_ms") -> tuple[float, float, float]:
    """(fixed ms, ms per layer, ms at 32 layers) for one measured figure."""
    layers = sorted(int(n) for n in runs)
    ys = [runs[str(n)][field][key] for n in layers]
    a, b = fit_line(layers, ys)
    return a, b, a + b * LAYERS_FULL


def consistency(runs: dict) -> list[str]:
    """Per model: the bandwidth its batch-1 step implies, and which threads did the work.
    One thread cannot read faster than the measured bandwidth; if a step seems to, either
    the figure is off or more threads computed than the binding says."""
    lines = []
    for layers in sorted(runs, key=int):
        run = runs[layers]
        step = run["step_ms"].get("1@none")
        if step is None or "busy_threads" not in run:
            continue
        implied = step_read_bytes(int(layers)) / (step / 1000) / 1e9
        busy = "; ".join(f"{t['name']} {t['cpu_s']} s on {t['cores']}" for t in run["busy_threads"])
        lines.append(f"- {layers} layer(s): batch-1 step {step} ms reads "
                     f"{step_read_bytes(int(layers)) / 1e9:.2f} GB = {implied:.1f} GB/s; "
                     f"torch threads {run['torch_threads']}; threads that worked: {busy}")
    return lines


def report(result: dict) -> str:
    lines = []
    for threads, runs in result["threads"].items():
        bw = result["bandwidth"][threads]
        full = step_read_bytes(LAYERS_FULL)
        floor_ms = 1000 * full / (bw["read_gbps"] * 1e9)
        lines += [f"### {threads} engine thread(s): memory read {bw['read_gbps']} GB/s, "
                  f"copy {bw['copy_gbps']} GB/s",
                  "", *consistency(runs), "",
                  "| batch | sampling | " + " | ".join(f"{n} layers (ms)" for n in sorted(runs, key=int))
                  + " | fixed + per layer (ms) | 32 layers (ms/step) | tokens/s at 32 layers |",
                  "|---|---|" + "---:|" * (len(runs) + 3)]
        for key in next(iter(runs.values()))["step_ms"]:
            batch, sampling = key.split("@")
            a, b, at32 = extrapolate(runs, key)
            cells = " | ".join(str(runs[n]["step_ms"][key]) for n in sorted(runs, key=int))
            lines.append(f"| {batch} | {sampling} | {cells} | {a:.1f} + {b:.1f}/layer | "
                         f"{at32:.0f} | {1000 * int(batch) / at32:.1f} |")
        lines += ["", f"Bandwidth floor of a batch-1 step at 32 layers: {full / 1e9:.1f} GB "
                  f"/ {bw['read_gbps']} GB/s = {floor_ms:.0f} ms.", ""]
        cost = result["top_p_ms"][threads]
        lines += ["top_p 0.95 filter alone (vLLM's apply_top_k_top_p, median of 30): " + ", ".join(
            f"batch {b}: {ms} ms/step" for b, ms in cost.items()), ""]
        prefill_key = min(next(iter(runs.values()))["prefill_ms"], key=int)
        a, b, at32 = extrapolate(runs, prefill_key, "prefill_ms")
        lines += [f"Prefill of one {result['config']['prompt_len']}-token prompt at 32 layers: "
                  f"{at32:.0f} ms ({a:.0f} + {b:.1f}/layer).", ""]
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--layers", type=int, nargs="+", default=[2, 4, 8])
    p.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32])
    p.add_argument("--threads", type=int, nargs="+", default=[1],
                   help="engine thread counts to measure (cores 0..n-1)")
    p.add_argument("--steps", type=int, default=64, help="decode steps timed per figure")
    p.add_argument("--sampling", nargs="+", choices=list(SAMPLING), default=["none"],
                   help="sampling filters to run the models with (the top_p filter's own "
                   "cost is measured apart in any case)")
    p.add_argument("--prompt-len", type=int, default=128)
    p.add_argument("--out", default=str(ROOT / "load" / "capacity.json"))
    p.add_argument("--child", nargs=2, metavar=("MODEL", "CPUS"), help=argparse.SUPPRESS)
    args = p.parse_args()

    if args.child:
        res = measure_model(args.child[0], args.child[1], args.batches, args.steps,
                            args.prompt_len, args.sampling)
        print("RESULT " + json.dumps(res), flush=True)
        return

    result = {**provenance(args), "threads": {}, "bandwidth": {}, "top_p_ms": {}}
    for threads in args.threads:
        cpus = ",".join(str(c) for c in sorted(os.sched_getaffinity(0))[:threads])
        result["bandwidth"][str(threads)] = memory_bandwidth(threads)
        result["top_p_ms"][str(threads)] = top_p_cost(args.batches, threads)
        runs = {}
        for layers in args.layers:
            shape = OPENCHAT_7B_SHAPE.__class__(**{**OPENCHAT_7B_SHAPE.__dict__, "layers": layers})
            path = ROOT / ".models" / f"capacity-L{layers}"
            t0 = time.monotonic()
            build_dev_model(path, shape=shape)
            print(f"== {layers} layer(s), {threads} thread(s) on cores {cpus} "
                  f"(model ready in {time.monotonic() - t0:.0f} s)", flush=True)
            proc = subprocess.run(
                [sys.executable, __file__, "--child", str(path), cpus,
                 "--batches", *map(str, args.batches), "--steps", str(args.steps),
                 "--prompt-len", str(args.prompt_len), "--sampling", *args.sampling],
                stdout=subprocess.PIPE, text=True, cwd=ROOT,
                env=dict(os.environ, HF_HUB_OFFLINE="1"))
            found = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
            if proc.returncode or not found:
                raise SystemExit(f"measuring {path} failed (exit {proc.returncode})")
            runs[str(layers)] = json.loads(found[-1][len("RESULT "):])
        result["threads"][str(threads)] = runs
    result["machine"]["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(report(result))
    print(f"(written to {args.out})")


if __name__ == "__main__":
    main()
