"""One typed settings object, read from configuration.yaml and OPENCHAT_* environment variables.

Precedence, highest first: environment (`OPENCHAT_MODEL`, `OPENCHAT_ENGINE__DTYPE`, ...),
then the YAML file named by `OPENCHAT_CONFIG` (default: configuration.yaml beside
service.py), then the defaults below.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CONFIG_FILE = PROJECT_ROOT / "configuration.yaml"

Condition = Literal["GPT4 Correct", "Math Correct"]


class SamplingDefaults(BaseModel):
    """Sampling values a preset applies when the request leaves them unset."""

    model_config = {"extra": "forbid"}

    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    top_k: int | None = Field(None, ge=-1)
    min_p: float | None = Field(None, ge=0, le=1)
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    repetition_penalty: float | None = Field(None, gt=0, le=2)


class Preset(BaseModel):
    """A task preset, served as its own model id in /v1/models."""

    model_config = {"extra": "forbid"}

    model_id: str = Field(description="The id clients put in `model` to pick this preset.")
    description: str = ""
    condition: Condition = "GPT4 Correct"
    system_prompt: str | None = Field(
        None, description="Used when the request brings no system message of its own."
    )
    sampling: SamplingDefaults = SamplingDefaults()


class EngineSettings(BaseModel):
    """vLLM engine settings; the effective values are logged at start-up."""

    model_config = {"extra": "forbid"}

    dtype: Literal["auto", "bfloat16", "float16", "float32"] = "bfloat16"
    max_model_len: int = Field(8192, ge=128)
    max_num_seqs: int = Field(64, ge=1, description="Sequences decoded together.")
    # CPU hosts: KV cache in GiB (vLLM's VLLM_CPU_KVCACHE_SPACE) and OpenMP threads.
    cpu_kv_cache_gib: float = Field(4, gt=0)
    cpu_threads: int | Literal["auto"] = Field(
        "auto", description="'auto': the declared cpu count, capped by the host, minus one."
    )
    cpu_placement: bool = Field(
        True, description="Run the engine's processes on its own cores and the HTTP worker on "
        "the rest (docs/deployment.md, CPU placement). Off, they float as under `vllm serve`, "
        "and probes can wait seconds while long answers generate.")
    cpu_engine_core: Literal["engine_cores", "idle"] = Field(
        "engine_cores", description="With cpu_placement, where vLLM's EngineCore process "
        "(scheduler, grammar masks) runs: 'engine_cores', beside the compute thread, the two "
        "taking turns; 'idle', on any core at the kernel's idle priority (SCHED_IDLE), so it "
        "works while the compute thread does wherever a core is free (a tiny model's "
        "constrained answers ~20 % sooner) but waits whenever the HTTP core is busy "
        "(docs/deployment.md, CPU placement).")
    cpu_engine_spin_s: float | None = Field(
        0.005, ge=0.001, le=1, description="With cpu_placement and the EngineCore on the "
        "engine's cores: seconds it busy-waits for a step's results after each one before "
        "it sleeps until woken. vLLM spins 1 s (None keeps that), which on the shared core "
        "takes turns with the forward pass; below a millisecond every wait becomes a "
        "wake-up and answers stall (docs/deployment.md, CPU placement).")
    # GPU hosts.
    gpu_memory_utilization: float = Field(0.9, gt=0, le=1)
    tensor_parallel_size: int = Field(1, ge=1)
    seed: int = 0
    enable_prefix_caching: bool = True
    log_stats: bool = Field(
        True, description="vLLM's engine statistics: the `vllm:` Prometheus metrics and "
        "its periodic throughput log line. Recording them costs the HTTP process CPU on "
        "every engine step; off, /metrics has no `vllm:` family and the service's time to "
        "first token of a non-streamed request is its whole engine time.")


class TrafficSettings(BaseModel):
    model_config = {"extra": "forbid"}

    timeout: int = Field(300, ge=1, description="Seconds before BentoML ends a request.")
    max_concurrency: int = Field(256, ge=1, description="Requests in flight per worker.")


class ServiceSettings(BaseModel):
    """BentoML service declaration (resources, traffic, port)."""

    model_config = {"extra": "forbid"}

    name: str = "openchat"
    port: int = Field(11402, ge=1, le=65535)
    resources: dict[str, str | int] = {"cpu": "4", "memory": "25Gi"}
    traffic: TrafficSettings = TrafficSettings()
    shutdown_grace_s: float = Field(
        120, ge=0, description="On SIGTERM: seconds in-flight requests may run to their end "
        "before they are cut off with 503 (sized for a long answer on the real model; set "
        "Kubernetes' terminationGracePeriodSeconds above it).")
    tracing: bool = Field(
        False, description="Run BentoML's OpenTelemetry middleware: a span per request and "
        "one per response message (every streamed chunk). BentoML exports spans only when "
        "its own `tracing` configuration names an exporter and a sample rate above 0; turn "
        "this on then. Off, the middleware passes requests straight through.")
    access_log: bool = Field(
        False, description="BentoML's own access log line per request, beside the audit "
        "line (openchat.audit), which already names the method, path, status, latency, key "
        "and tokens. Off saves a log record per request on the HTTP worker.")


class LimitSettings(BaseModel):
    """Bounds on what one request may ask for."""

    model_config = {"extra": "forbid"}

    max_n: int = Field(16, ge=1)
    max_messages: int = Field(1024, ge=1)
    max_content_chars: int = Field(262_144, ge=1, description="Characters of text in one "
                                   "request's messages or prompts; refused before "
                                   "tokenizing, since more can never fit the context.")


class QueryParameter(BaseModel):
    """One bound parameter of a named query; becomes a property of the tool's schema."""

    model_config = {"extra": "forbid"}

    type: Literal["string", "integer", "number", "boolean"] = "string"
    description: str = ""
    enum: list[str | int | float] | None = None
    minimum: float | None = None
    maximum: float | None = None
    required: bool = True
    default: str | int | float | bool | None = Field(None, description="Bound when the "
                                                      "model leaves an optional one out.")


class NamedQuery(BaseModel):
    """A parameterised, read-only SQL statement exposed to the model as its own tool."""

    model_config = {"extra": "forbid"}

    description: str
    sql: str = Field(description="One SELECT with :name placeholders for the parameters.")
    parameters: dict[str, QueryParameter] = {}


class SQLSettings(BaseModel):
    """The SQL data source behind the sql_* tools (any SQLAlchemy URL)."""

    model_config = {"extra": "forbid"}

    url: str = Field("sqlite:///data/openchat.db", description="Where the data lives; a "
                     "relative SQLite path is relative to the working directory.")
    read_only_url: str | None = Field(None, description="PostgreSQL: a role that may only "
                                      "SELECT, used by the tools; default: `url`.")
    sample_data: bool = Field(True, description="Create and fill the sample tables when "
                              "the database has none.")
    max_rows: int = Field(200, ge=1)
    statement_timeout_s: float = Field(5, gt=0)
    named_queries: dict[str, NamedQuery] = {}


class DocumentSettings(BaseModel):
    """The Chroma vector store behind search_documents and the document endpoints."""

    model_config = {"extra": "forbid"}

    path: str = Field("data/chroma", description="Embedded persistent Chroma directory.")
    url: str | None = Field(None, description="A Chroma server (http://host:port) instead.")
    default_collection: str = "docs"
    chunk_size: int = Field(1000, ge=100, description="Characters per chunk.")
    chunk_overlap: int = Field(150, ge=0)
    max_top_k: int = Field(20, ge=1)


class EmbeddingSettings(BaseModel):
    model_config = {"extra": "forbid"}

    model_id: str = Field("all-minilm-l6-v2", description="The id /v1/embeddings serves.")
    max_inputs: int = Field(256, ge=1, description="Inputs per /v1/embeddings request.")


class ToolSettings(BaseModel):
    """The server-side tool loop (generate -> run tools -> generate ...)."""

    model_config = {"extra": "forbid"}

    enabled: bool = True
    max_steps: int = Field(4, ge=1, description="Generations per request, the last one "
                           "without tools.")
    timeout_s: float = Field(10, gt=0, description="Per tool call.")
    max_result_bytes: int = Field(8192, ge=256, description="A result longer than this is "
                                  "cut before it reaches the model.")


class ResponsesSettings(BaseModel):
    """The Responses API's stored responses (openchat/storage/responses.py)."""

    model_config = {"extra": "forbid"}

    store_url: str = Field("sqlite:///data/responses.db", description="Where stored "
                           "responses are kept: a SQLite file, or PostgreSQL shared by "
                           "replicas (postgresql+psycopg://...).")
    max_age_days: float = Field(30, gt=0, description="Stored responses older than this "
                                "are gone (OpenAI keeps them 30 days).")
    max_per_key: int = Field(10_000, ge=1, description="Each key keeps at most this many "
                             "stored responses; storing one more removes its oldest.")


class BatchSettings(BaseModel):
    """The Batch API (docs/batch.md): uploaded files and the batches run from them."""

    model_config = {"extra": "forbid"}

    store_url: str = Field("sqlite:///data/batches.db", description="Where file metadata, "
                           "batches and their lines are kept: a SQLite file, or PostgreSQL "
                           "shared by replicas (postgresql+psycopg://...).")
    files_dir: str = Field("data/files", description="Where the files' bytes are kept; "
                           "replicas must share it (a volume) as they share store_url.")
    max_file_bytes: int = Field(64 * 1024 * 1024, ge=1024, description="Larger uploads "
                                "are refused (413); this is also the upload route's body "
                                "limit, in place of auth.max_body_bytes.")
    max_lines: int = Field(50_000, ge=1, description="Requests in one batch file.")
    concurrency: int = Field(4, ge=1, description="Batch lines run at once by each "
                             "replica's runner.")
    priority: int = Field(10, ge=0, description="vLLM scheduling priority of batch lines "
                          "(interactive requests have 0; a larger number waits).")
    yield_to_interactive: bool = Field(True, description="Claim no new line while an "
                                       "interactive request is in flight on this worker: "
                                       "batch lines fill the idle time. Priority alone "
                                       "let a running batch slow interactive answers.")
    preempt_for_interactive: bool = Field(True, description="When an interactive request "
                                          "reaches the engine, abort the batch lines running "
                                          "and hand them back to the queue: they start over "
                                          "later, so batch work only ever fills idle time.")
    max_preemptions: int = Field(3, ge=0, description="A line is preempted at most this "
                                 "many times; then it runs to its end (one such line at a "
                                 "time per replica), so that a long line still finishes "
                                 "under steady traffic.")
    poll_interval_s: float = Field(1.0, gt=0, description="How often an idle runner looks "
                                   "for lines to claim.")
    lease_s: float = Field(60, ge=5, description="A claimed line whose runner has not "
                           "renewed its claim for this long (its replica died) is run "
                           "again by another.")


class AuthSettings(BaseModel):
    """API keys (openchat/keys.py), their scopes and per-key limits."""

    model_config = {"extra": "forbid"}

    enabled: bool = True
    # Kept apart from the SQL tools' database on purpose: the model's read-only SQL must
    # never see key hashes.
    keys_url: str = Field("sqlite:///data/keys.db", description="Where API keys are kept "
                          "(SQLite file or postgresql+psycopg://).")
    default_rpm: int = Field(60, ge=1, description="Requests per minute, per key.")
    default_tpm: int = Field(100_000, ge=1, description="Tokens per minute, per key.")
    default_max_concurrency: int = Field(8, ge=1, description="Requests in flight, per key.")
    # The bootstrap admin key (OPENCHAT_ADMIN_KEY) drives set-up, client suites and first
    # load tests: the defaults above would refuse it within a minute.
    admin_rpm: int = Field(6000, ge=1, description="Requests per minute of the bootstrap "
                           "admin key, set when it is created.")
    admin_tpm: int = Field(10_000_000, ge=1, description="Tokens per minute of the "
                           "bootstrap admin key, set when it is created.")
    admin_max_concurrency: int = Field(256, ge=1, description="Requests in flight of the "
                                       "bootstrap admin key, set when it is created.")
    key_cache_s: float = Field(1.0, ge=0, le=60, description="Seconds a worker trusts a "
                               "key it has just verified before reading it again (0: read "
                               "it on every request). A revocation takes effect at once on "
                               "the worker that made it, within this time elsewhere.")
    protect_metrics: bool = Field(True, description="/metrics needs the admin scope.")
    protect_docs: bool = Field(False, description="/docs and the OpenAPI schema need a key "
                                  "(inference scope).")
    rate_limit_storage: str = Field("memory://", description="Where rate-limit counts "
                                    "live: memory:// (each replica its own budget) or "
                                    "redis://host:6379/0 / rediss:// (one budget shared "
                                    "by all replicas).")
    rate_window_s: int = Field(60, ge=1, le=3600, description="The rate-limit window: "
                               "default_rpm/default_tpm and each key's rpm/tpm are per "
                               "window (a minute unless changed).")
    max_body_bytes: int = Field(4 * 1024 * 1024, ge=1024, description="Larger request "
                                "bodies are refused (413).")

    @field_validator("rate_limit_storage")
    @classmethod
    def _refundable_storage(cls, uri: str) -> str:
        # Token reservations must be refunded: memory:// via `limits`, Redis by our own
        # counters (ratelimit_redis.py); `limits`' other stores cannot.
        if not uri.removeprefix("async+").startswith(("memory://", "redis://", "rediss://")):
            raise ValueError("rate_limit_storage must be memory://, redis:// or rediss://")
        return uri


def _default_presets() -> dict[str, Preset]:
    return {
        "general": Preset(model_id="openchat-3.5", description="General chat."),
        "math": Preset(
            model_id="openchat-3.5-math",
            description="Maths with the Math Correct condition.",
            condition="Math Correct",
            sampling=SamplingDefaults(temperature=0.0),
        ),
    }


class Settings(BaseSettings):
    """Everything the service reads at start-up."""

    model_config = SettingsConfigDict(
        env_prefix="OPENCHAT_", env_nested_delimiter="__", extra="forbid"
    )

    model: str = Field(
        "openchat/openchat-3.5-0106",
        description="A local checkpoint directory or a Hugging Face model id.",
    )
    tokenizer: str | None = Field(
        None, description="Directory or HF id holding tokenizer.model; default: `model`."
    )
    engine: EngineSettings = EngineSettings()
    service: ServiceSettings = ServiceSettings()
    limits: LimitSettings = LimitSettings()
    sql: SQLSettings = SQLSettings()
    documents: DocumentSettings = DocumentSettings()
    embeddings: EmbeddingSettings = EmbeddingSettings()
    tools: ToolSettings = ToolSettings()
    auth: AuthSettings = AuthSettings()
    responses: ResponsesSettings = ResponsesSettings()
    batch: BatchSettings = BatchSettings()
    default_preset: str = "general"
    presets: dict[str, Preset] = Field(default_factory=_default_presets)

    @field_validator("presets")
    @classmethod
    def _unique_model_ids(cls, presets: dict[str, Preset]) -> dict[str, Preset]:
        ids = [p.model_id for p in presets.values()]
        if len(ids) != len(set(ids)):
            raise ValueError("presets must have distinct model_id values")
        if not presets:
            raise ValueError("at least one preset is required")
        return presets

    @model_validator(mode="after")
    def _default_preset_exists(self) -> Settings:
        if self.default_preset not in self.presets:
            raise ValueError(f"default_preset {self.default_preset!r} is not in presets")
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        config_file = Path(os.environ.get("OPENCHAT_CONFIG", DEFAULT_CONFIG_FILE))
        yaml_source = YamlConfigSettingsSource(settings_cls, yaml_file=config_file)
        return (init_settings, env_settings, yaml_source)

    @property
    def served_model_name(self) -> str:
        return self.presets[self.default_preset].model_id

    def preset_for_model(self, model_id: str) -> Preset | None:
        for preset in self.presets.values():
            if preset.model_id == model_id:
                return preset
        return None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
