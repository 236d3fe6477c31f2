"""Unit: openchat/generation/placement.py moves every thread of this process, and what
it starts inherits the engine's cores (the end-to-end check is in test_responsiveness)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from dataclasses import replace

import pytest

from openchat.generation.placement import engine_placement, parse_cpus


def test_parse_cpus_reads_lists_and_ranges():
    assert parse_cpus("0") == {0}
    assert parse_cpus("0,2-4,7") == {0, 2, 3, 4, 7}


@pytest.fixture
def restore_affinity():
    before = {int(t): os.sched_getaffinity(int(t)) for t in os.listdir("/proc/self/task")}
    yield
    for tid, cpus in before.items():
        try:
            os.sched_setaffinity(tid, cpus)
        except OSError:
            pass


def _child_cores() -> set[int]:
    code = "import json, os; print(json.dumps(sorted(os.sched_getaffinity(0))))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    return set(json.loads(out))


def test_the_engine_starts_on_its_cores_and_this_process_moves_off_them(restore_affinity):
    host = os.sched_getaffinity(0)
    if len(host) < 2:
        pytest.skip("needs two cores")
    engine = {min(host)}
    idle = threading.Event()
    waiting = threading.Thread(target=idle.wait, daemon=True)  # a thread that exists already
    waiting.start()
    with engine_placement(engine, host) as http:
        assert http == host - engine
        assert _child_cores() == engine  # a process started here inherits the engine's cores
        assert os.sched_getaffinity(waiting.native_id) == engine
    assert os.sched_getaffinity(0) == host - engine
    assert os.sched_getaffinity(waiting.native_id) == host - engine
    idle.set()


# A child that starts a grandchild and says its pid: vLLM's EngineCore and its compute
# worker, in shape.
_PARENT_OF_ONE = ("import subprocess, sys, time; "
                  "g = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); "
                  "print(g.pid, flush=True); time.sleep(60)")


@pytest.mark.parametrize("idle_engine_core", [True, False])
def test_the_engine_core_runs_anywhere_at_idle_priority_and_its_worker_keeps_the_cores(
        restore_affinity, idle_engine_core):
    host = os.sched_getaffinity(0)
    if len(host) < 2:
        pytest.skip("needs two cores")
    engine = {min(host)}
    already_running = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        with engine_placement(engine, host, idle_engine_core):
            core = subprocess.Popen([sys.executable, "-c", _PARENT_OF_ONE],
                                    stdout=subprocess.PIPE, text=True)
            worker = int(core.stdout.readline())
        try:
            if idle_engine_core:
                assert os.sched_getscheduler(core.pid) == os.SCHED_IDLE
                assert os.sched_getaffinity(core.pid) == host
            else:
                assert os.sched_getscheduler(core.pid) == os.SCHED_OTHER
                assert os.sched_getaffinity(core.pid) == engine
            assert os.sched_getscheduler(worker) == os.SCHED_OTHER
            assert os.sched_getaffinity(worker) == engine
            # a process that was not started by the block is left as it was
            assert os.sched_getscheduler(already_running.pid) == os.SCHED_OTHER
        finally:
            os.kill(worker, 9)
            core.kill()
            core.wait()
    finally:
        already_running.kill()
        already_running.wait()


def test_one_core_or_a_foreign_binding_moves_nothing(restore_affinity):
    host = os.sched_getaffinity(0)
    with engine_placement(set(host), host) as http:  # the engine takes every core
        assert http == set()
        assert os.sched_getaffinity(0) == host
    with engine_placement({10_000}, host) as http:  # a core this host does not have
        assert http == set()
    assert os.sched_getaffinity(0) == host


def test_the_engine_is_placed_only_on_a_cpu_host_with_placement_on(restore_affinity):
    from openchat.config import EngineSettings
    from openchat.generation.engine import EngineLayout, placement_for

    host = sorted(os.sched_getaffinity(0))
    if len(host) < 2:
        pytest.skip("placement needs two cores")
    layout = EngineLayout(model="m", device="cpu", dtype="bfloat16", max_model_len=128,
                          max_num_seqs=1, tensor_parallel_size=1, kv_cache="1 GiB",
                          threads=str(host[0]))
    with placement_for(layout, EngineSettings()) as http_cpus:
        assert os.sched_getaffinity(0) == {host[0]}  # the engine would start here
    assert http_cpus == set(host[1:]) and os.sched_getaffinity(0) == set(host[1:])

    for settings, device in ((EngineSettings(cpu_placement=False), "cpu"),
                             (EngineSettings(), "cuda")):
        before = os.sched_getaffinity(0)
        with placement_for(replace(layout, device=device), settings) as http_cpus:
            assert os.sched_getaffinity(0) == before and http_cpus == set()
