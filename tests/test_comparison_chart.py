"""load/comparison_chart.py: the per-workload service / raw vLLM ratios over rounds, and the
chart drawn from them. load/ is a folder of scripts, not a package: imported by path."""

from __future__ import annotations

import sys
from dataclasses import astuple
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "load"))

from comparison_chart import (  # noqa: E402
    draw_workloads_chart,
    workload_ratios,
    workloads_chart_path,
)


def level(req_per_s: float, lat_p50_ms: float | None, ttft_p50_ms: float | None,
          errors: int = 0) -> dict:
    return {"req_per_s": req_per_s, "lat_p50_ms": lat_p50_ms, "ttft_p50_ms": ttft_p50_ms,
            "errors": errors}


def target(chat: tuple[dict, dict], tool_call: tuple[dict, dict]) -> dict:
    """Closed-loop figures at concurrency 1 and 32 for two workloads."""
    return {"closed": {name: {"1": at_1, "32": at_32}
                       for name, (at_1, at_32) in (("chat", chat), ("tool_call", tool_call))}}


# Two rounds. Round 2's tool_call at c=32 failed on the service: no throughput ratio there.
RESULTS = {
    "machine": {"cpus": 2, "omp_bind": "0"},
    "rounds": [
        {"vllm": target((level(2, 100, 10), level(10, 900, 90)),
                        (level(2, 200, 20), level(8, 900, 90))),
         "service": target((level(2, 110, 12), level(12, 900, 90)),
                           (level(2, 200, 10), level(6, 900, 90)))},
        {"vllm": target((level(2, 100, 10), level(10, 900, 90)),
                        (level(2, 100, 20), level(8, 900, 90))),
         "service": target((level(2, 90, 10), level(9, 900, 90)),
                           (level(2, 300, 30), level(0, None, None, errors=50)))},
    ],
}


def test_ratios_are_the_median_and_range_of_the_per_round_ratios():
    ratios = workload_ratios(RESULTS)
    assert list(ratios) == ["chat", "tool_call"]
    chat = ratios["chat"]
    assert astuple(chat["req_per_s"]) == pytest.approx((1.05, 0.9, 1.2, 2))  # at c=32
    assert astuple(chat["lat_p50_ms"]) == pytest.approx((1.0, 0.9, 1.1, 2))  # at c=1
    assert astuple(chat["ttft_p50_ms"]) == pytest.approx((1.1, 1.0, 1.2, 2))
    tool_call = ratios["tool_call"]
    assert astuple(tool_call["lat_p50_ms"]) == pytest.approx((2.0, 1.0, 3.0, 2))
    assert astuple(tool_call["ttft_p50_ms"]) == pytest.approx((1.0, 0.5, 1.5, 2))


def test_a_round_with_errors_is_left_out_of_that_bar():
    spread = workload_ratios(RESULTS)["tool_call"]["req_per_s"]
    assert astuple(spread) == pytest.approx((0.75, 0.75, 0.75, 1))


def test_a_run_of_one_target_has_no_ratios():
    only_service = {"rounds": [{"service": one["service"]} for one in RESULTS["rounds"]]}
    assert workload_ratios(only_service) == {}
    assert draw_workloads_chart(only_service, Path("unused.png")) is None


def test_the_chart_sits_beside_the_latency_chart():
    assert workloads_chart_path(Path("docs/benchmarks-latency.png")) == Path(
        "docs/benchmarks-workloads.png")
    assert workloads_chart_path(Path("/tmp/run.png")) == Path("/tmp/run-workloads.png")


def test_the_chart_is_written(tmp_path):
    pytest.importorskip("PIL")  # the fallback when matplotlib is missing
    path = tmp_path / "bench-workloads.png"
    assert draw_workloads_chart(RESULTS, path) in ("matplotlib", "Pillow")
    assert path.read_bytes().startswith(b"\x89PNG")
