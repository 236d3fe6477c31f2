"""Where the engine's processes and this HTTP process run on a CPU host.

vLLM's CPU backend binds its OpenMP compute threads to the cores named in
VLLM_CPU_OMP_THREADS_BIND, and leaves the rest to float. The rest includes the EngineCore
process (scheduler, grammar masks), which busy-waits (sched_yield) on the shared-memory
queue to its compute worker for up to a second after every read, so it takes most of a
core while anything is generating. Floating, it took the core the HTTP process needs:
with two long answers running on 2 cores, /metrics and /readyz waited up to 17 s and a
client on the same host was starved too (docs/deployment.md, "CPU placement").

So the engine's processes start on the engine's cores (a child inherits the affinity of
the thread that spawns it), and once the engine is up this process's threads move to the
cores left over, where the threads it starts later stay (new threads inherit it too).

Optionally (engine.cpu_engine_core: idle) the EngineCore then goes back to every core at
the kernel's idle priority (SCHED_IDLE), so it runs only where no other thread wants the
core at that moment: beside the compute thread the two take turns where vLLM means the
masks to be computed while the worker runs the forward pass (a tiny model's json_schema
answers 1.2-1.4x as long as a bare `vllm serve`'s), and at normal priority on the HTTP
core it starved clients there. But at idle priority it waits whenever the HTTP core is
busy, so it is not the default. Its compute worker is its child and keeps the engine's
cores either way.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager

import psutil

logger = logging.getLogger(__name__)


def parse_cpus(binding: str) -> set[int]:
    """The cores of an OpenMP binding such as "0,1" or "0-3"."""
    cpus: set[int] = set()
    for part in binding.split(","):
        first, _, last = part.partition("-")
        cpus.update(range(int(first), int(last or first) + 1))
    return cpus


def _threads(pid: int | str = "self") -> list[int]:
    # sched_setaffinity and sched_setscheduler act on one thread: do every thread there is.
    return [int(tid) for tid in os.listdir(f"/proc/{pid}/task")]


def _move_all_threads(cpus: set[int]) -> None:
    for tid in _threads():
        try:
            os.sched_setaffinity(tid, cpus)
        except OSError:  # the thread ended meanwhile
            pass


def _run_idle_anywhere(pid: int, cpus: set[int]) -> bool:
    """Every thread of `pid` at idle priority, then on `cpus`: in that order, so that a
    refusal leaves it where it was rather than floating at normal priority."""
    try:
        for tid in _threads(pid):
            try:
                # Lowering a thread's own priority needs no privilege.
                os.sched_setscheduler(tid, os.SCHED_IDLE, os.sched_param(0))
                os.sched_setaffinity(tid, cpus)
            except ProcessLookupError:  # the thread ended meanwhile
                pass
    except OSError as exc:
        logger.warning("engine process %s not put at idle priority on every core (%s); "
                       "what was not moved stays on the engine's cores", pid, exc)
        return False
    return True


def _children() -> set[int]:
    return {child.pid for child in psutil.Process().children()}


@contextmanager
def engine_placement(engine_cpus: set[int], host_cpus: set[int],
                     idle_engine_core: bool = False) -> Iterator[set[int]]:
    """Within the block (which starts the engine), this process runs on `engine_cpus`;
    after it, on the other `host_cpus`; with `idle_engine_core` the processes the block
    started directly (vLLM's EngineCore; its compute worker is its child) then run on all
    `host_cpus` at idle priority. Yields the HTTP cores (empty: no other core to give, and
    nothing moves)."""
    available = set(host_cpus)
    http_cpus = available - engine_cpus
    if not http_cpus or not engine_cpus <= available:
        yield set()
        return
    started_before = _children() if idle_engine_core else set()
    _move_all_threads(engine_cpus)
    try:
        yield http_cpus
    finally:
        _move_all_threads(http_cpus)
        started = sorted(_children() - started_before) if idle_engine_core else []
        idle = [pid for pid in started if _run_idle_anywhere(pid, available)]
        logger.info("CPU placement: engine on cores %s, HTTP on cores %s, EngineCore %s",
                    _ranges(engine_cpus), _ranges(http_cpus),
                    f"and the processes started with it (pids {idle}) on cores "
                    f"{_ranges(available)} at idle priority" if idle
                    else "on the engine's cores")


def _ranges(cpus: set[int]) -> str:
    return ",".join(str(c) for c in sorted(cpus))
