"""The engine client: what the flows need from an engine (`EngineClient`, a Protocol),
and its implementation over vLLM's AsyncLLM (`VLLMEngine`: start, generate deltas,
health, stop).

Only the engine's public API is used (AsyncEngineArgs, AsyncLLM.generate/shutdown,
SamplingParams, token inputs); vLLM's own OpenAI serving classes are internal and change
every release. The flows see only the Protocol, so they run against a fake engine in unit
tests (tests/fake_engine.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import math
import os
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from openchat.config import EngineSettings, Settings
from openchat.generation.engine_spin import SPIN_ENV
from openchat.generation.placement import engine_placement, parse_cpus
from openchat.protocol.errors import APIError
from openchat.telemetry import usage

if TYPE_CHECKING:
    from vllm import SamplingParams

logger = logging.getLogger(__name__)

# vLLM's scheduling priority for the engine requests of the current task: lower runs first.
# Interactive requests keep 0; the batch runner sets batch.priority for its lines, so they
# wait behind interactive ones for a sequence slot and are preempted first when the KV
# cache runs short (load/priority.py checks it on this build).
PRIORITY: ContextVar[int] = ContextVar("openchat_engine_priority", default=0)


class InteractiveTraffic:
    """The engine's interactive requests (priority 0) in flight, and who is told when one
    starts: the batch runner steps aside for them (api/batch_runner.py)."""

    def __init__(self) -> None:
        self.in_flight = 0
        self._listeners: list[Callable[[], None]] = []

    def listen(self, on_start: Callable[[], None]) -> None:
        self._listeners.append(on_start)

    def started(self) -> None:
        self.in_flight += 1
        for on_start in self._listeners:
            try:
                on_start()
            except Exception:  # a listener's fault must not fail the request
                logger.exception("interactive traffic listener failed")

    def ended(self) -> None:
        self.in_flight -= 1


INTERACTIVE = InteractiveTraffic()


class ChoiceDelta(Protocol):
    """One choice's step, as vLLM's CompletionOutput carries it (DELTA output kind)."""

    index: int
    text: str
    token_ids: Sequence[int]
    logprobs: list[dict[int, Any]] | None  # per token: id -> vLLM Logprob
    finish_reason: str | None


class EngineOutput(Protocol):
    """One step of one request, as vLLM's RequestOutput carries it."""

    outputs: Sequence[ChoiceDelta]


class EngineClient(Protocol):
    """What the flows need from an engine."""

    max_model_len: int

    @property
    def is_healthy(self) -> bool: ...

    def generate(self, prompt_ids: list[int], params: SamplingParams,
                 request_id: str) -> AsyncIterator[EngineOutput]:
        """The request's steps as they come; closing the iterator aborts the request."""
        ...


class ModelNotFoundError(RuntimeError):
    """The configured model is neither a local checkpoint nor a resolvable HF id."""


@dataclass(frozen=True)
class EngineLayout:
    """The effective engine settings, as logged at start-up."""

    model: str
    device: str
    dtype: str
    max_model_len: int
    max_num_seqs: int
    tensor_parallel_size: int
    kv_cache: str
    threads: str
    engine_spin: str = "vLLM's (1 s)"  # the EngineCore's busy-wait per step (engine_spin.py)


@functools.cache  # the host's cores as first seen, before engine_placement narrows them
def _available_cpus() -> list[int]:
    try:
        return sorted(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return list(range(os.cpu_count() or 1))


def cpu_thread_binding(declared_cpus: float, setting: int | str) -> str:
    """OpenMP core list for the engine: the declared cpu count capped by the host, minus
    one core left to the HTTP process (tokenizing, streaming); at least one."""
    cpus = _available_cpus()
    if setting == "auto":
        threads = max(1, min(int(declared_cpus), len(cpus)) - 1)
    else:
        threads = max(1, min(int(setting), len(cpus)))
    return ",".join(str(c) for c in cpus[:threads])


def _has_gpu() -> bool:
    from vllm.platforms import current_platform

    return current_platform.is_cuda_alike()


def check_model_source(model: str) -> None:
    """Fail fast, with a sentence instead of a stack trace, when the model is missing."""
    path = Path(model).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise ModelNotFoundError(f"{model} exists but holds no config.json checkpoint")
        return
    if model.startswith((".", "/", "~")) or model.count("/") != 1:
        raise ModelNotFoundError(
            f"model {model!r} is not a directory here and not a Hugging Face id "
            "(set OPENCHAT_MODEL or `model` in configuration.yaml; `make dev-model` "
            "builds the small test checkpoint)"
        )
    try:
        from huggingface_hub import snapshot_download

        snapshot_download(model, allow_patterns=["config.json"])
    except Exception as exc:
        raise ModelNotFoundError(
            f"model {model!r} could not be found locally or on the Hugging Face Hub "
            f"({type(exc).__name__}); download it first or point OPENCHAT_MODEL at a "
            "local checkpoint"
        ) from None


def engine_error(exc: BaseException) -> APIError | None:
    """Map the engine's exceptions to client-facing errors (None: not an engine error)."""
    from vllm.exceptions import VLLMClientError
    from vllm.v1.engine.exceptions import EngineDeadError

    if isinstance(exc, EngineDeadError):
        return APIError("The inference engine stopped; retry shortly.", status=503,
                        code="engine_unavailable")
    if isinstance(exc, VLLMClientError):
        return APIError(str(exc), code="invalid_request")
    return None


def final_only(params: SamplingParams) -> SamplingParams:
    """A copy of `params` that makes the engine send one output, at the end, instead of a
    delta per step: for requests collected whole, it spares the frontend building,
    queueing and handing over an output per token (and us consuming it)."""
    import msgspec
    from vllm.sampling_params import RequestOutputKind

    return msgspec.structs.replace(params, output_kind=RequestOutputKind.FINAL_ONLY)


def _first_token_latency(output: EngineOutput) -> float | None:
    """Seconds from the request's arrival in the engine to its first token, as vLLM's
    request stats say (None when it keeps none)."""
    latency = getattr(getattr(output, "metrics", None), "first_token_latency", None)
    return latency if isinstance(latency, float) and latency > 0 else None


def cached_tokens(output: EngineOutput) -> int:
    """Prompt tokens of this request that vLLM's prefix cache served (0 if it says none)."""
    return getattr(output, "num_cached_tokens", None) or 0


def placement_for(layout: EngineLayout, engine: EngineSettings):
    """The context the engine starts in: on a CPU host with placement on, its processes
    start on the engine's cores and this one then leaves them (placement.py)."""
    if layout.device != "cpu" or not engine.cpu_placement:
        return contextlib.nullcontext(set())
    return engine_placement(parse_cpus(layout.threads), set(_available_cpus()),
                            idle_engine_core=engine.cpu_engine_core == "idle")


def engine_spin_for(engine: EngineSettings, on_gpu: bool) -> float | None:
    """The EngineCore's busy-wait, where it shares a core with the compute thread: on a
    CPU host with placement on and the EngineCore on the engine's cores. Elsewhere it
    spins on a core of its own and vLLM's default stays (None)."""
    shares_core = (not on_gpu and engine.cpu_placement
                   and engine.cpu_engine_core == "engine_cores")
    return engine.cpu_engine_spin_s if shares_core else None


class VLLMEngine:
    """One in-process vLLM engine (its EngineCore runs in a child process); an
    EngineClient."""

    def __init__(self, settings: Settings) -> None:
        from vllm import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        check_model_source(settings.model)
        args, self.layout = self._engine_args(settings, AsyncEngineArgs)
        logger.info("starting vLLM engine: %s", self.layout)
        with placement_for(self.layout, settings.engine):  # engine on its cores, HTTP off them
            self._llm = AsyncLLM.from_engine_args(args)
        # vLLM reads its VLLM_* variables from os.environ on every access (dozens per
        # request in the frontend) until they are cached, which it does itself in its
        # engine processes once they have started; the values are settled now here too.
        from vllm import envs

        envs.enable_envs_cache()
        self.max_model_len = self._llm.model_config.max_model_len
        self._running: set[str] = set()  # request ids, for abort_all()

    @staticmethod
    def _engine_args(settings: Settings, engine_args_cls):
        engine: EngineSettings = settings.engine
        on_gpu = _has_gpu()
        kwargs = dict(
            model=settings.model,
            tokenizer=settings.tokenizer or settings.model,
            dtype=engine.dtype,
            max_model_len=engine.max_model_len,
            max_num_seqs=engine.max_num_seqs,
            tensor_parallel_size=engine.tensor_parallel_size,
            seed=engine.seed,
            enable_prefix_caching=engine.enable_prefix_caching,
            disable_log_stats=not engine.log_stats,
            scheduling_policy="priority",  # PRIORITY: batch lines wait for interactive ones
            # Compact JSON: without this a model (and surely a random one) may fill the
            # answer with whitespace until max_tokens runs out. vLLM applies it engine-wide.
            structured_outputs_config={"backend": "xgrammar", "disable_any_whitespace": True},
            # BentoML's process manager sends SIGTERM to the EngineCore together with the
            # worker: with a grace period the engine finishes the requests it holds and
            # refuses new ones (vLLM's graceful shutdown) instead of aborting them.
            shutdown_timeout=math.ceil(settings.service.shutdown_grace_s),
        )
        if on_gpu:
            kwargs["gpu_memory_utilization"] = engine.gpu_memory_utilization
            kv_cache = f"{engine.gpu_memory_utilization:.0%} of GPU memory"
            threads = "n/a"
        else:
            # vLLM's CPU backend reads these from the environment of the engine process.
            declared = float(settings.service.resources.get("cpu", 1))
            threads = cpu_thread_binding(declared, engine.cpu_threads)
            os.environ["VLLM_CPU_OMP_THREADS_BIND"] = threads
            os.environ["VLLM_CPU_KVCACHE_SPACE"] = str(int(max(1, engine.cpu_kv_cache_gib)))
            # Prompts are prefilled whole, never split over steps: when vLLM splits one
            # (chunked prefill) it rewinds the request's own random generator, which a
            # request with a `seed` has, by an offset that CPU generators do not keep,
            # and the engine dies ("CPU Generator does not use offset": 32 concurrent
            # seeded json_schema requests did it). vLLM makes the same choice on CPU for
            # MLA models. The cost: one long prompt holds up the others' next token.
            kwargs["enable_chunked_prefill"] = False
            kwargs["max_num_batched_tokens"] = max(engine.max_model_len, 2048)
            kv_cache = f"{int(max(1, engine.cpu_kv_cache_gib))} GiB of RAM"
        spin = engine_spin_for(engine, on_gpu)
        if spin is None:
            os.environ.pop(SPIN_ENV, None)
        else:
            os.environ[SPIN_ENV] = repr(spin)  # read in vLLM's processes (engine_spin.py)
        layout = EngineLayout(
            model=settings.model,
            device="gpu" if on_gpu else "cpu",
            dtype=engine.dtype,
            max_model_len=engine.max_model_len,
            max_num_seqs=engine.max_num_seqs,
            tensor_parallel_size=engine.tensor_parallel_size,
            kv_cache=kv_cache,
            threads=threads,
            engine_spin=EngineLayout.engine_spin if spin is None else f"{spin * 1000:g} ms",
        )
        return engine_args_cls(**kwargs), layout

    async def generate(self, prompt_ids: list[int], params: SamplingParams,
                       request_id: str) -> AsyncIterator[EngineOutput]:
        """Yield vLLM RequestOutputs (deltas when params.output_kind is DELTA).

        Cancelling the consumer (client gone) makes vLLM abort the request.
        """
        from vllm.inputs import tokens_input

        submitted = time.perf_counter()
        priority = PRIORITY.get()
        stream = self._llm.generate(tokens_input(prompt_ids), params, request_id,
                                    priority=priority)
        usage.add_prompt(len(prompt_ids))
        cache_counted = False
        self._running.add(request_id)
        if priority == 0:
            INTERACTIVE.started()
        try:
            async for output in stream:
                if not cache_counted:  # the same count rides on every step
                    usage.add_cached(cached_tokens(output))
                    cache_counted = True
                first_token_at = None
                if output.finished and (latency := _first_token_latency(output)):
                    first_token_at = submitted + latency  # counted only now (final-only)
                usage.add_completion(sum(len(o.token_ids) for o in output.outputs),
                                     first_token_at)
                if any(o.finish_reason == "abort" for o in output.outputs):
                    # Not the client (it is still here): the engine cut the request off,
                    # e.g. while shutting down. A partial answer must not pass as whole.
                    raise APIError("The request was cut short because the engine is "
                                   "stopping or restarting; retry it.", status=503,
                                   code="request_aborted")
                yield output
        except (asyncio.CancelledError, GeneratorExit):
            logger.info("request %s aborted: the client went away", request_id)
            raise
        finally:
            if priority == 0:
                INTERACTIVE.ended()
            self._running.discard(request_id)
            await stream.aclose()  # closing vLLM's generator early aborts the request

    async def abort_all(self) -> int:
        """Abort every running request (they end with 503 request_aborted); how many."""
        running = list(self._running)
        if running:
            await self._llm.abort(running)
        return len(running)

    @property
    def is_healthy(self) -> bool:
        return not self._llm.errored and self._llm.is_running

    async def watch(self, on_death: Callable[[], None], interval: float = 0.5) -> None:
        """Call `on_death()` once if the engine stops serving (its process died or it
        errored); in-flight requests have meanwhile failed with EngineDeadError (503)."""
        while self.is_healthy:
            await asyncio.sleep(interval)
        logger.critical("the vLLM engine is dead (errored=%s, running=%s)",
                        self._llm.errored, self._llm.is_running)
        on_death()

    def shutdown(self) -> None:
        logger.info("stopping vLLM engine")
        self._llm.shutdown()
