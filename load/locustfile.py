"""A realistic request mix against a running OpenChat service.

    OPENCHAT_API_KEY=... .venv/bin/locust -f load/locustfile.py --headless -u 4 -r 2 -t 30s \
        --host http://127.0.0.1:11402

Tasks (weight): short chat (5), long chat (2), streaming chat (3), JSON output with a
json_schema (2), named tool call (1). Streaming requests read the whole stream and report
two extra entries under the request type "STREAM": "chat stream TTFB" (time to the first
content chunk) and "chat stream whole" (until [DONE]); locust's own POST entry for it ends
at the response headers. Each request checks the response's shape, so a 200 with
a broken body still counts as a failure.

Environment: OPENCHAT_API_KEY (default: the development admin key of `make serve`; several
keys separated by commas are shared out among the users in turn), OPENCHAT_LOAD_MODEL
(default openchat-3.5), OPENCHAT_LOAD_TIMEOUT (seconds without a byte from the server
before a request counts as failed, default 120).

Tight-key users (load/soak.py): with OPENCHAT_TIGHT_API_KEY set, OPENCHAT_TIGHT_USERS
(default 2) extra users send short chats back to back with that key, which has a deliberately
low rpm and concurrency. Their 429s are expected: each one is checked (OpenAI error shape,
code rate_limit_exceeded, Retry-After on request-rate refusals) and counted as a success
under "tight 429 (expected)"; anything else but a valid 200 is a failure. Without the
variable the class is abstract and locust never starts it.
"""

from __future__ import annotations

import itertools
import json
import os
import random
import time

from locust import HttpUser, between, constant, events, task

API_KEYS = os.environ.get("OPENCHAT_API_KEY", "oc-dev-admin-key-for-local-use-only").split(",")
MODEL = os.environ.get("OPENCHAT_LOAD_MODEL", "openchat-3.5")
TIMEOUT = float(os.environ.get("OPENCHAT_LOAD_TIMEOUT", "120"))
TIGHT_API_KEY = os.environ.get("OPENCHAT_TIGHT_API_KEY", "")
TIGHT_USERS = int(os.environ.get("OPENCHAT_TIGHT_USERS", "2"))
EXPECTED_429 = "tight 429 (expected)"

SHORT_QUESTIONS = [
    "What is the capital of Australia?",
    "Give me a synonym for 'happy'.",
    "How many legs does a spider have?",
    "What does HTTP stand for?",
    "Name a prime number between 20 and 30.",
    "Translate 'good morning' into Spanish.",
]

LONG_CONTEXT = (
    "Our team is migrating a monolithic Django application to a set of services. The "
    "application handles user accounts, billing, a product catalogue with about forty "
    "thousand items, order processing, and e-mail notifications. It runs on three virtual "
    "machines behind a load balancer and uses one PostgreSQL database of 300 GB. Peak "
    "traffic is around 900 requests per second on weekday evenings. The billing code is "
    "the oldest part and has little test coverage; the catalogue changes daily through a "
    "nightly import job. We have four backend engineers and one part-time operations "
    "person, and we would like to finish within two quarters without downtime."
)
LONG_TASKS = [
    "Propose an order in which to extract the services, with one sentence of reasoning each.",
    "List the main risks of this migration and one mitigation for each.",
    "Summarise the situation in three bullet points for a manager.",
]

PERSON_SCHEMA = {
    "type": "object",
    "properties": {
        # Bounded strings: the dev model's random weights never close a string on their
        # own, so unbounded ones run into max_tokens and the JSON is cut off.
        "name": {"type": "string", "maxLength": 24},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "city": {"type": "string", "maxLength": 24},
    },
    "required": ["name", "age", "city"],
    "additionalProperties": False,
}

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather for a city",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "maxLength": 24},
                "unit": {"enum": ["celsius", "fahrenheit"]},
            },
            "required": ["city", "unit"],
            "additionalProperties": False,
        },
    },
}


def _problem(r) -> str:
    """Why a response that is not a 200 failed: the transport error, or status and body."""
    if r.error is not None and not r.status_code:
        return f"{type(r.error).__name__}: {str(r.error)[:160]}"
    return f"{r.status_code}: {r.text[:200]}"


_next_key = itertools.count()


class ChatUser(HttpUser):
    wait_time = between(0.5, 2.0)

    def on_start(self):
        key = API_KEYS[next(_next_key) % len(API_KEYS)].strip()
        self.client.headers.update({"Authorization": f"Bearer {key}"})

    def _chat(self, name: str, payload: dict, check) -> None:
        payload = {"model": MODEL, **payload}
        with self.client.post("/v1/chat/completions", json=payload, name=name,
                              timeout=TIMEOUT, catch_response=True) as r:
            if r.status_code != 200:
                r.failure(_problem(r))
                return
            try:
                problem = check(r.json())
            except Exception as exc:  # noqa: BLE001 - any malformed body is a failure
                problem = f"{type(exc).__name__}: {exc}"
            if problem:
                r.failure(problem)
            else:
                r.success()

    @staticmethod
    def _has_text(body: dict):
        msg = body["choices"][0]["message"]
        return None if isinstance(msg.get("content"), str) else "no content"

    @task(5)
    def short_chat(self):
        self._chat("chat short", {
            "messages": [{"role": "user", "content": random.choice(SHORT_QUESTIONS)}],
            "max_tokens": 32,
        }, self._has_text)

    @task(2)
    def long_chat(self):
        self._chat("chat long", {
            "messages": [
                {"role": "system", "content": "You are a pragmatic software architect."},
                {"role": "user", "content": LONG_CONTEXT + "\n\n" + random.choice(LONG_TASKS)},
            ],
            "max_tokens": 128,
        }, self._has_text)

    @task(2)
    def json_output(self):
        def check(body):
            if body["choices"][0]["finish_reason"] == "length":
                return "cut off by max_tokens"
            data = json.loads(body["choices"][0]["message"]["content"])
            missing = set(PERSON_SCHEMA["required"]) - set(data)
            return f"missing keys {missing}" if missing else None

        self._chat("chat json_schema", {
            "messages": [{"role": "user", "content":
                          "Invent a person and give their name, age and city as JSON."}],
            "max_tokens": 128,
            "response_format": {"type": "json_schema", "json_schema": {
                "name": "person", "strict": True, "schema": PERSON_SCHEMA}},
        }, check)

    @task(1)
    def tool_call(self):
        def check(body):
            if body["choices"][0]["finish_reason"] == "length":
                return "cut off by max_tokens"
            calls = body["choices"][0]["message"].get("tool_calls") or []
            if not calls or calls[0]["function"]["name"] != "get_weather":
                return "no get_weather call"
            args = json.loads(calls[0]["function"]["arguments"])
            return None if "city" in args else "arguments without city"

        self._chat("chat tool named", {
            "messages": [{"role": "user", "content": "What's the weather in Paris?"}],
            "tools": [WEATHER_TOOL],
            "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
            "max_tokens": 128,
        }, check)

    @task(3)
    def streaming_chat(self):
        payload = {
            "model": MODEL,
            "messages": [{"role": "user", "content": random.choice(SHORT_QUESTIONS)}],
            "max_tokens": 64,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        start = time.perf_counter()
        ttfb = None
        chunks = 0
        done = False
        with self.client.post("/v1/chat/completions", json=payload, name="chat stream",
                              stream=True, timeout=TIMEOUT, catch_response=True) as r:
            if r.status_code != 200:
                r.failure(_problem(r))
                return
            try:
                for line in r.iter_lines(decode_unicode=True):
                    if not line or not line.startswith("data: "):
                        continue
                    data = line[6:]
                    if data == "[DONE]":
                        done = True
                        break
                    event = json.loads(data)
                    if "error" in event:
                        r.failure(f"stream error: {event['error']}")
                        return
                    for choice in event.get("choices") or []:
                        if choice.get("delta", {}).get("content"):
                            chunks += 1
                            if ttfb is None:
                                ttfb = time.perf_counter() - start
            except Exception as exc:  # noqa: BLE001
                r.failure(f"{type(exc).__name__}: {exc}")
                return
            if not done:
                r.failure("stream ended without [DONE]")
                return
            r.success()
        total = time.perf_counter() - start
        # Custom entries: locust's own "chat stream" time ends at the response headers.
        events.request.fire(request_type="STREAM", name="chat stream whole",
                            response_time=total * 1000, response_length=chunks,
                            exception=None, context={})
        if ttfb is not None:
            events.request.fire(request_type="STREAM", name="chat stream TTFB",
                                response_time=ttfb * 1000, response_length=chunks,
                                exception=None, context={})


class TightKeyUser(HttpUser):
    """Short chats back to back with a key whose limits they must run into."""

    abstract = not TIGHT_API_KEY
    fixed_count = TIGHT_USERS
    wait_time = constant(1.0)

    def on_start(self):
        self.client.headers.update({"Authorization": f"Bearer {TIGHT_API_KEY}"})

    @task
    def tight_chat(self):
        payload = {"model": MODEL, "max_tokens": 8,
                   "messages": [{"role": "user", "content": random.choice(SHORT_QUESTIONS)}]}
        with self.client.post("/v1/chat/completions", json=payload, name="tight chat",
                              timeout=TIMEOUT, catch_response=True) as r:
            try:
                problem = self._check(r)
            except Exception as exc:  # noqa: BLE001 - any malformed body is a failure
                problem = f"{type(exc).__name__}: {exc}"
            if problem:
                r.failure(problem)
                return
            if r.status_code == 429:
                r.request_meta["name"] = EXPECTED_429
            r.success()

    @staticmethod
    def _check(r) -> str | None:
        if r.status_code == 200:
            return ChatUser._has_text(r.json())
        if r.status_code != 429:
            return _problem(r)
        error = r.json()["error"]
        if error.get("code") != "rate_limit_exceeded":
            return f"429 without code rate_limit_exceeded: {r.text[:200]}"
        if error.get("type") == "requests" and not r.headers.get("retry-after"):
            return "429 (requests) without Retry-After"
        return None
