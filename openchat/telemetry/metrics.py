"""The service's own Prometheus metrics, served by BentoML's /metrics beside the engine's
`vllm:` family and BentoML's `bentoml_` family.

BentoML runs prometheus_client in multiprocess mode (PROMETHEUS_MULTIPROC_DIR), so metrics
defined here are collected from every worker process like vLLM's; gauges say how to
combine processes (`livesum`). Labels stay bounded: routes are their declared templates
(api/routing.py), never raw paths, and presets are the configured model ids or "other".
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.2, 0.4, 0.8, 1.5, 3, 6, 12, 30, 60, 120, 300)

REQUESTS = Counter("openchat_requests", "Requests answered, by route, preset and status.",
                   ["route", "preset", "status"])
LATENCY = Histogram("openchat_request_duration_seconds",
                    "Time from request to the last byte of the response, by route.",
                    ["route"], buckets=LATENCY_BUCKETS)
TIME_TO_FIRST_TOKEN = Histogram(
    "openchat_time_to_first_token_seconds",
    "Time from the request's arrival to the engine's first generated token (service "
    "overhead included, unlike vllm:time_to_first_token_seconds).",
    buckets=LATENCY_BUCKETS)
PROMPT_TOKENS = Counter("openchat_prompt_tokens", "Prompt tokens processed, by route.",
                        ["route"])
COMPLETION_TOKENS = Counter("openchat_completion_tokens", "Tokens generated, by route.",
                            ["route"])
CACHED_PROMPT_TOKENS = Counter("openchat_cached_prompt_tokens", "Prompt tokens served by "
                               "the engine's prefix cache, by route.", ["route"])
RATE_LIMITED = Counter("openchat_rate_limited",
                       "Requests refused by a per-key limit, by limit kind.", ["kind"])
AUTH_FAILURES = Counter("openchat_auth_failures",
                        "Requests refused by authentication or authorisation.", ["status"])
TOOL_CALLS = Counter("openchat_tool_calls", "Server tool calls, by tool and outcome.",
                     ["tool", "outcome"])
TOOL_DURATION = Histogram("openchat_tool_call_duration_seconds",
                          "Server tool call duration, by tool.", ["tool"],
                          buckets=LATENCY_BUCKETS)
BATCH_LINES = Counter("openchat_batch_lines", "Batch lines run, by outcome: completed "
                      "(status 200) or failed (an error line).", ["outcome"])
BATCH_PREEMPTIONS = Counter("openchat_batch_preemptions", "Batch lines aborted and handed "
                            "back because an interactive request reached the engine.")
OPEN_STREAMS = Gauge("openchat_open_streams", "Streamed responses in progress.",
                     multiprocess_mode="livesum")

def preset_label(model: object, model_ids: frozenset[str]) -> str:
    if model is None:
        return "none"
    return model if model in model_ids else "other"
