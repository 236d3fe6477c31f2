"""One ASGI middleware in front of the whole BentoML app: request id, body limit, API key,
route scopes, per-key rate limits, token metering and the audit log.

Order for each HTTP request: an `X-Request-ID` is taken or made (and returned); a body
over `auth.max_body_bytes` is refused with 413 before it is read in full (a file upload
of declared length is not held here: it streams to its route); the key in
`Authorization: Bearer` is checked (401) against the scopes its route declares (403,
routing.py); the key's limits admit the request or answer 429 (access/ratelimit.py),
reserving tokens for it; the app runs with a fresh UsageMeter (telemetry/usage.py); at
the end the reservation settles on the tokens really used, one audit line is logged and
the route's metrics are counted under its template. Routes declared open (the probes)
need no key; everything else does unless `auth.enabled` is false.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from openchat.access.keys import open_store
from openchat.access.budget import key_limits
from openchat.access.ratelimit import RateLimited, shared_rate_limiter
from openchat.access.scopes import forbidden, missing_scope
from openchat.api.drain import Drain
from openchat.api.routing import KEY_SCOPE_ITEM, PROBES, RouteSpec, RouteTable
from openchat.config import Settings
from openchat.protocol.errors import APIError
from openchat.telemetry import logs, metrics, usage

logger = logging.getLogger("openchat.access")
audit = logging.getLogger("openchat.audit")

DEFAULT_COMPLETION_RESERVATION = 256  # tokens held for a request that sets no max_tokens
BYTES_PER_TOKEN = 4  # a cautious guess of prompt tokens from the body, settled later


class AccessMiddleware:
    def __init__(self, app, settings: Settings, routes: RouteTable,
                 drain: Drain | None = None) -> None:
        self.app = app
        self.drain = drain or Drain(0)
        self.traffic = settings.service.traffic
        self.routes = routes
        self.settings = settings.auth
        self.context = settings.engine.max_model_len
        self.model_ids = frozenset([p.model_id for p in settings.presets.values()]
                                   + [settings.embeddings.model_id])
        self.keys = None
        if self.settings.enabled:
            self.keys = open_store(self.settings.keys_url, self.settings.key_cache_s)
            admin_secret = os.environ.get("OPENCHAT_ADMIN_KEY")
            if admin_secret:
                key = self.keys.ensure_admin(
                    admin_secret, rpm=self.settings.admin_rpm, tpm=self.settings.admin_tpm,
                    max_concurrency=self.settings.admin_max_concurrency)
                logger.info("OPENCHAT_ADMIN_KEY is admin key %s", key.id)
        else:
            logger.warning("authentication is OFF (auth.enabled: false): every route is "
                           "open to anyone who can reach this port, without rate limits")
        # Shared with the batch runner, which charges batch lines' tokens to it.
        self.limiter = shared_rate_limiter(self.settings.rate_limit_storage,
                                           window=self.settings.rate_window_s)

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if scope["path"] in _ALWAYS_ANSWERED:
            await self._handle(scope, receive, send)  # not counted as in flight
            return
        with self.drain.request():
            await self._handle(scope, receive, send)

    async def _handle(self, scope, receive, send) -> None:
        started = time.perf_counter()
        given = _header(scope, b"x-request-id")
        request_id = given if given and _REQUEST_ID.fullmatch(given) else uuid.uuid4().hex
        fields: dict[str, Any] = {}
        scope.setdefault("state", {})["request_id"] = request_id
        logs.request_id.set(request_id)
        meter = usage.start_meter()
        response = _Response(send, request_id)
        key = ticket = None

        async def settle() -> None:
            # Before the response's last byte, so the client's next request sees the
            # unused reservation back; shielded: a timed-out request must still settle.
            nonlocal ticket
            if ticket is not None:
                done, ticket = ticket, None
                await asyncio.shield(self.limiter.settle(done, used_tokens=meter.total_tokens))
        response.before_end = settle
        route = self.routes.find(scope["method"], scope["path"])
        try:
            if scope["path"] not in _ALWAYS_ANSWERED:
                if self.drain.refusing():
                    raise _shutting_down()
                if self.drain.in_flight > self.traffic.max_concurrency:  # this one counted
                    raise _busy(self.traffic.max_concurrency)
            key = await self._authenticate(scope, route)  # before reading a stranger's body
            _check_content_type(scope)
            size = _streamed_size(scope, route)
            if size is None:
                body = await self._read_body(scope, receive, route)
                fields, size, receive = _json_fields(body), len(body), _replay(body, receive)
            if key is not None:
                ticket = await self._admit(key, fields, size)
                response.extra_headers = ticket.headers
            await self._run_app(scope, receive, response)
        except APIError as error:
            if error.headers:
                response.extra_headers = error.headers
            await response.error(error)
        finally:
            await settle()  # if the response never reached its end
            if scope["path"] not in PROBES:  # a 403 still names the key that tried
                key = scope.get(KEY_SCOPE_ITEM, key)
                self._audit(scope, key, response.status, meter, started, request_id)
                self._measure(route, fields, response.status, meter, started)

    # -- steps ------------------------------------------------------------------------------

    async def _run_app(self, scope, receive, response: _Response) -> None:
        """The app, cut off with 504 if it has not started its response within
        `traffic.timeout` (a stream that has started runs on, as with BentoML's own
        timeout, which stays behind this one as a backstop)."""
        app = asyncio.ensure_future(self.app(scope, receive, response.send))
        started = asyncio.ensure_future(response.started.wait())
        try:
            await asyncio.wait({app, started}, timeout=self.traffic.timeout,
                               return_when=asyncio.FIRST_COMPLETED)
            if not app.done() and not response.started.is_set():  # timed out
                app.cancel()  # cancelling aborts its engine requests
                await asyncio.wait({app})
                raise APIError(f"The request did not finish within {self.traffic.timeout} "
                               "seconds (service.traffic.timeout).", status=504,
                               type="timeout", code="timeout")
            await app
        finally:
            started.cancel()
            if not app.done():  # this request itself was cancelled
                app.cancel()

    async def _read_body(self, scope, receive, route: RouteSpec) -> bytes:
        """The whole body (it is replayed to the app); 413 past the limit (the route's
        own, for file uploads)."""
        limit = route.max_body or self.settings.max_body_bytes
        declared = _header(scope, b"content-length")
        if declared and declared.isdigit() and int(declared) > limit:
            raise _too_large(limit)
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise _too_large(limit)
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        return b"".join(chunks)

    async def _authenticate(self, scope, route: RouteSpec):
        needed = route.scopes
        if needed is None or self.keys is None:
            return None
        authorization = _header(scope, b"authorization") or ""
        scheme, _, secret = authorization.partition(" ")
        if scheme.lower() != "bearer" or not secret.strip():
            raise APIError("You didn't provide an API key. Send it as 'Authorization: "
                           "Bearer YOUR_KEY'.", status=401, code="missing_api_key")
        secret = secret.strip()
        key = self.keys.recent(secret) or await asyncio.to_thread(self.keys.verify, secret)
        if key is None:
            raise APIError("Incorrect or revoked API key provided.", status=401,
                           code="invalid_api_key")
        scope[KEY_SCOPE_ITEM] = key
        lacking = missing_scope(key.scope_set, needed)
        if lacking is not None:
            raise forbidden(lacking)
        return key

    async def _admit(self, key, fields: dict[str, Any], body_size: int):
        limits = key_limits(key, self.settings)
        try:
            return await self.limiter.admit(key.id, limits=limits,
                                            reserve_tokens=_reservation(
                                                fields, body_size, self.context))
        except RateLimited as limited:
            metrics.RATE_LIMITED.labels(limited.kind).inc()
            raise APIError(str(limited), status=429, type=limited.kind,
                           code="rate_limit_exceeded", headers=limited.headers) from None
        except Exception:  # the shared store is down: refuse rather than run unlimited
            logger.exception("rate-limit store unavailable")
            raise APIError("Rate limits cannot be checked right now; retry shortly.",
                           status=503, code="rate_limit_store_unavailable") from None

    def _measure(self, spec: RouteSpec, fields: dict[str, Any], status: int | None, meter,
                 started: float) -> None:
        route = spec.label
        preset = metrics.preset_label(fields.get("model"), self.model_ids)
        metrics.REQUESTS.labels(route, preset, str(status or 0)).inc()
        metrics.LATENCY.labels(route).observe(time.perf_counter() - started)
        if meter.prompt_tokens:
            metrics.PROMPT_TOKENS.labels(route).inc(meter.prompt_tokens)
        if meter.completion_tokens:
            metrics.COMPLETION_TOKENS.labels(route).inc(meter.completion_tokens)
        if meter.cached_tokens:
            metrics.CACHED_PROMPT_TOKENS.labels(route).inc(meter.cached_tokens)
        if meter.first_token_at is not None:
            metrics.TIME_TO_FIRST_TOKEN.observe(meter.first_token_at - meter.started)
        if status in (401, 403):
            metrics.AUTH_FAILURES.labels(str(status)).inc()

    def _audit(self, scope, key, status, meter, started, request_id) -> None:
        audit.info("request", extra={
            "request_id": request_id,
            "key_id": getattr(key, "id", None), "key_name": getattr(key, "name", None),
            "method": scope["method"], "path": scope["path"], "status": status,
            "prompt_tokens": meter.prompt_tokens,
            "completion_tokens": meter.completion_tokens,
            "latency_ms": round((time.perf_counter() - started) * 1000, 1),
        })


class _Response:
    """Wraps `send`: adds the request id and rate-limit headers, remembers the status, and
    puts error bodies that are not in OpenAI's shape (BentoML's typed APIs answer
    `[{"error": "..."}]`) into it, keeping their status."""

    def __init__(self, send, request_id: str) -> None:
        self._send = send
        self.request_id = request_id
        self.extra_headers: dict[str, str] = {}
        self.status: int | None = None
        self.started = asyncio.Event()  # the response's status line is on its way
        self.before_end: Callable[[], Awaitable[None]] | None = None  # run before the last body
        self._held: dict[str, Any] | None = None  # an error's start, until its body is read
        self._error_body: list[bytes] = []

    async def send(self, message) -> None:
        if message["type"] == "http.response.start":
            self.status = message["status"]
            self.started.set()
            headers = list(message.get("headers", []))
            headers.append((b"x-request-id", self.request_id.encode()))
            headers += [(k.encode(), v.encode()) for k, v in self.extra_headers.items()]
            message = {**message, "headers": headers}
            if self.status >= 400:
                self._held = message
                return
        elif message["type"] == "http.response.body" and self._held is not None:
            self._error_body.append(message.get("body", b""))
            if message.get("more_body", False):
                return
            start, body = self._held, _openai_error(self.status, b"".join(self._error_body))
            self._held = None
            headers = [(k, v) for k, v in start["headers"]
                       if k.lower() not in (b"content-length", b"content-type")]
            headers += [(b"content-type", b"application/json"),
                        (b"content-length", str(len(body)).encode())]
            await self._send({**start, "headers": headers})
            message = {"type": "http.response.body", "body": body}
        if (message["type"] == "http.response.body" and not message.get("more_body", False)
                and self.before_end is not None):
            await self.before_end()
        await self._send(message)

    async def error(self, error: APIError) -> None:
        if self.status is not None:
            return  # the response has started: nothing more can be said
        body = json.dumps(error.body()).encode()
        headers = [(b"content-type", b"application/json"),
                   (b"content-length", str(len(body)).encode())]
        await self.send({"type": "http.response.start", "status": error.status,
                         "headers": headers})
        await self.send({"type": "http.response.body", "body": body})


def _check_content_type(scope) -> None:
    """A multipart body without its boundary cannot be parsed (BentoML's typed APIs
    failed on it with a 500): the client's mistake, said as one."""
    content_type = (_header(scope, b"content-type") or "").lower()
    if content_type.startswith("multipart/") and "boundary=" not in content_type:
        raise APIError("A multipart/form-data body needs its boundary in the Content-Type "
                       "header (multipart/form-data; boundary=...).",
                       code="invalid_content_type")


def _openai_error(status: int, body: bytes) -> bytes:
    """`body` if it already is an error in OpenAI's shape, else the same message in it."""
    try:
        data = json.loads(body)
    except ValueError:
        data = body.decode("utf-8", "replace").strip()
    if isinstance(data, dict) and isinstance(data.get("error"), dict):
        return body
    items = data if isinstance(data, list) else [data]
    messages = [str(item.get("error") or item.get("detail") or item)
                if isinstance(item, dict) else str(item) for item in items if item]
    error = APIError("; ".join(messages) or "Request failed.", status=status)
    return json.dumps(error.body()).encode()


def _streamed_size(scope, route: RouteSpec) -> int | None:
    """The declared length of a file upload (a route with its own body limit) that is
    within that limit: its body streams to the route instead of being held here (the
    server reads no more than declared). None for every other body, read whole."""
    declared = _header(scope, b"content-length")
    if route.max_body is None or not declared or not declared.isdigit():
        return None
    if int(declared) > route.max_body:
        raise _too_large(route.max_body)
    return int(declared)


def _replay(body: bytes, receive):
    """A `receive` that hands the app the body already read, then waits for disconnect."""
    sent = False

    async def replay() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


_ALWAYS_ANSWERED = PROBES | {"/metrics"}  # also while draining (readiness says 503 itself)
_OBJECT_START = re.compile(rb"\s*\{")
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")  # what may travel into logs and headers


def _json_fields(body: bytes) -> dict[str, Any]:
    """The body's top-level JSON object, for reservations and metric labels ({} if none:
    the route answers malformed JSON with its own 400)."""
    if not _OBJECT_START.match(body):
        return {}
    try:
        data = json.loads(body)
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def _reservation(fields: dict[str, Any], body_size: int, context: int) -> int:
    """Tokens to hold while the request runs: the prompt guessed from the body size, plus
    the completion it asks for, never more than its choices can use: each one fits in the
    context window. So a max_tokens beyond the context reaches validation (400
    context_length_exceeded) instead of being refused as over the key's budget. A body
    that is not a JSON object (a file upload) holds no prompt."""
    completion = DEFAULT_COMPLETION_RESERVATION
    asked = (fields.get("max_completion_tokens") or fields.get("max_tokens")
             or fields.get("max_output_tokens"))
    n = fields.get("n")
    choices = n if isinstance(n, int) and 0 < n <= 128 else 1
    if isinstance(asked, int) and not isinstance(asked, bool) and asked > 0:
        completion = min(asked, context)
    prompt = body_size // BYTES_PER_TOKEN if fields else 0
    return min(prompt + completion * choices, context * choices)


def _header(scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key.lower() == name:
            return value.decode("latin-1")
    return None


def _busy(limit: int) -> APIError:
    return APIError(f"The server is busy: {limit} requests are already running here "
                    "(service.traffic.max_concurrency); retry shortly.", status=429,
                    type="server_busy", code="server_busy", headers={"Retry-After": "1"})


def _shutting_down() -> APIError:
    return APIError("The server is shutting down; retry the request (on another replica).",
                    status=503, code="shutting_down",
                    headers={"Connection": "close", "Retry-After": "1"})


def _too_large(limit: int) -> APIError:
    return APIError(f"The request body is larger than {limit} bytes.", status=413,
                    code="request_too_large")

