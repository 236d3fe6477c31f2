"""openchat/generation/engine_spin.py: vLLM's plugin loader, in a fresh process as in its
EngineCore, shortens its queue readers' busy-wait only when the service asked for it;
and the service asks only where the EngineCore shares the compute thread's core."""

from __future__ import annotations

import os
import subprocess
import sys
from importlib.metadata import entry_points

import pytest

from openchat.config import EngineSettings
from openchat.generation.engine import engine_spin_for
from openchat.generation.engine_spin import SPIN_ENV

# What vLLM does at the start of its EngineCore: load the general plugins, then make the
# reader of the compute worker's results queue.
READER_SPIN = """
import zmq
import vllm.plugins
from vllm.distributed.device_communicators.shm_broadcast import SpinCondition
from vllm.plugins import load_general_plugins
load_general_plugins()
vllm.plugins.plugins_loaded = False
load_general_plugins()  # a second real load wraps nothing twice
reader = SpinCondition(is_reader=True, context=zmq.Context(), notify_address="inproc://x")
explicit = SpinCondition(is_reader=True, context=zmq.Context(), notify_address="inproc://y",
                         busy_loop_s=0.25)
print(reader.busy_loop_s, explicit.busy_loop_s)
"""


def _spins_in_a_vllm_process(env_value: str | None) -> list[float]:
    env = {k: v for k, v in os.environ.items() if k != SPIN_ENV}
    if env_value is not None:
        env[SPIN_ENV] = env_value
    done = subprocess.run([sys.executable, "-c", READER_SPIN], env=env, capture_output=True,
                          text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    return [float(x) for x in done.stdout.split()[-2:]]


def test_the_plugin_is_registered_where_vllm_looks_for_it():
    plugins = {e.name: e.value for e in entry_points(group="vllm.general_plugins")}
    assert plugins.get("openchat_engine_spin") == "openchat.generation.engine_spin:configure"


@pytest.mark.timeout(300)
def test_vllm_readers_spin_as_the_service_asked_and_otherwise_as_vllm_does():
    assert _spins_in_a_vllm_process("0.005") == [0.005, 0.25]
    assert _spins_in_a_vllm_process(None) == [1.0, 0.25]  # a bare vLLM: its own default


def test_the_spin_is_shortened_only_where_the_engine_core_shares_the_compute_core():
    assert engine_spin_for(EngineSettings(), on_gpu=False) == 0.005
    assert engine_spin_for(EngineSettings(cpu_engine_spin_s=0.02), on_gpu=False) == 0.02
    assert engine_spin_for(EngineSettings(cpu_engine_spin_s=None), on_gpu=False) is None
    assert engine_spin_for(EngineSettings(), on_gpu=True) is None
    assert engine_spin_for(EngineSettings(cpu_placement=False), on_gpu=False) is None
    assert engine_spin_for(EngineSettings(cpu_engine_core="idle"), on_gpu=False) is None


@pytest.mark.parametrize("value", [0, 0.0005, 2])
def test_a_spin_that_would_stall_or_burn_a_core_is_refused(value):
    with pytest.raises(ValueError, match="cpu_engine_spin_s"):
        EngineSettings(cpu_engine_spin_s=value)
