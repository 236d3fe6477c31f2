"""How long vLLM's EngineCore busy-waits for the compute worker's step results before it
sleeps until woken (docs/deployment.md, CPU placement).

vLLM's readers of its shared-memory queues spin with `sched_yield` for one second after
each read (`SpinCondition(busy_loop_s=1)`, a constructor default with no setting). The
EngineCore waits on one such queue through every forward pass. With the service's CPU
placement it shares the compute thread's core, so that spin takes turns with the forward
pass itself: on a model of OpenChat-3.5's shape it made a single answer ~4.5 % slower than
raw vLLM, where the EngineCore floats to another core (docs/benchmarks.md).

vLLM starts its processes with `spawn`, so a change made in this process does not reach
them; vLLM's own hook for that is a `vllm.general_plugins` entry point (pyproject.toml),
which it calls in every process it starts. `configure` is that hook: it changes the
default only where the service asked for it, through `SPIN_ENV`, so a bare `vllm serve`
in the same environment keeps vLLM's behaviour. Readers created before plugins load (the
compute worker's, which waits on the EngineCore for milliseconds) keep vLLM's default.
"""

from __future__ import annotations

import functools
import os

SPIN_ENV = "OPENCHAT_VLLM_SPIN_S"


def configure() -> None:
    """vLLM's plugin hook: with SPIN_ENV set (seconds), queue readers made from now on in
    this process spin that long after a read, instead of one second."""
    value = os.environ.get(SPIN_ENV)
    if not value:
        return
    from vllm.distributed.device_communicators.shm_broadcast import SpinCondition

    # vLLM's own constructor, kept on the class so a second call (vLLM may load plugins
    # more than once in a process) does not wrap the wrapper.
    init = SpinCondition.__dict__.get("_vllm_init", SpinCondition.__init__)
    SpinCondition._vllm_init = init
    SpinCondition.__init__ = functools.partialmethod(init, busy_loop_s=float(value))
