"""Where the engine's processes and this HTTP process run on a CPU host.

vLLM's CPU backend binds its OpenMP compute threads to the cores named in
VLLM_CPU_OMP_THREADS_BIND, and leaves the rest to float. The rest includes the EngineCore
process, which busy-waits (sched_yield) on the shared-memory queue to its compute worker
for up to a second after every read, so it takes most of a core while anything is
generating. Floating, it took the core the HTTP process needs: with two long answers
running on 2 cores, /metrics and /readyz waited up to 17 s and a client on the same host
was starved too. Held on the engine's cores, it only waits there while the compute thread
works, and probes answered within 50 ms at the same generation speed (docs/deployment.md,
"CPU placement").

So the engine's processes start on the engine's cores (a child inherits the affinity of
the thread that spawns it), and once the engine is up this process's threads move to the
cores left over, where the threads it starts later stay (new threads inherit it too).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager

logger = logging.getLogger(__name__)


def parse_cpus(binding: str) -> set[int]:
    """The cores of an OpenMP binding such as "0,1" or "0-3"."""
    cpus: set[int] = set()
    for part in binding.split(","):
        first, _, last = part.partition("-")
        cpus.update(range(int(first), int(last or first) + 1))
    return cpus


def _move_all_threads(cpus: set[int]) -> None:
    # sched_setaffinity(0) moves the calling thread only: move every thread there is.
    for tid in os.listdir("/proc/self/task"):
        try:
            os.sched_setaffinity(int(tid), cpus)
        except OSError:  # the thread ended meanwhile
            pass


@contextmanager
def engine_placement(engine_cpus: set[int], host_cpus: set[int]) -> Iterator[set[int]]:
    """Within the block (which starts the engine), this process runs on `engine_cpus`;
    after it, on the other `host_cpus`. Yields those HTTP cores (empty: no other core to
    give, and nothing moves)."""
    available = set(host_cpus)
    http_cpus = available - engine_cpus
    if not http_cpus or not engine_cpus <= available:
        yield set()
        return
    _move_all_threads(engine_cpus)
    try:
        yield http_cpus
    finally:
        _move_all_threads(http_cpus)
        logger.info("CPU placement: engine on cores %s, HTTP on cores %s",
                    _ranges(engine_cpus), _ranges(http_cpus))


def _ranges(cpus: set[int]) -> str:
    return ",".join(str(c) for c in sorted(cpus))
