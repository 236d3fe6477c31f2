"""Shared fixtures. End-to-end tests start the real service once per session: `bentoml
serve` with the in-process vLLM engine on the dev model, on a free loopback port."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import pytest

from tests.ports import free_port

ROOT = Path(__file__).resolve().parent.parent
DEV_MODEL = Path(os.environ.get("OPENCHAT_TEST_MODEL", ROOT / ".models" / "openchat-dev"))
BENTOML = Path(sys.executable).parent / "bentoml"
STARTUP_SECONDS = 420
# The bootstrap admin key (OPENCHAT_ADMIN_KEY) of every test service; clients send it.
ADMIN_KEY = "oc-test-admin-0123456789abcdefghij"
AUTH = {"Authorization": f"Bearer {ADMIN_KEY}"}

# OpenChat's reference ids for one user turn "Hi" (BOS, "GPT4 Correct User:", "Hi",
# <|end_of_turn|>, "GPT4 Correct Assistant:"), from the model authors' template.
REFERENCE_HI_IDS = [1, 420, 6316, 28781, 3198, 3123, 1247, 28747, 15359, 32000,
                    420, 6316, 28781, 3198, 3123, 21631, 28747]


class RunningService:
    """A `bentoml serve` process and its log, started in its own process group."""

    def __init__(self, env: dict[str, str], log_path: Path):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self._log = open(log_path, "w")
        self.process = subprocess.Popen(
            [str(BENTOML), "serve", "service:OpenChat", "--host", "127.0.0.1",
             "--port", str(self.port)],
            cwd=ROOT, env=env, stdout=self._log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def wait_ready(self, timeout: float = STARTUP_SECONDS) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"service exited early:\n{self.log()[-4000:]}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=5).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(1)
        raise RuntimeError(f"service not ready in {timeout}s:\n{self.log()[-4000:]}")

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def stop(self, timeout: float = 60) -> int | None:
        """SIGTERM the whole group, as a supervisor would; SIGKILL what is left."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self._log.close()
        return self.process.returncode


def service_env(**overrides: str) -> dict[str, str]:
    """Environment for a test service: dev model, its own data directory, the test admin
    key, and limits high enough that only the rate-limit tests meet them."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENCHAT_")}
    data = Path(tempfile.mkdtemp(prefix="openchat-test-"))
    env.update(
        OPENCHAT_MODEL=str(DEV_MODEL),
        OPENCHAT_SQL__URL=f"sqlite:///{data / 'shop.db'}",
        OPENCHAT_DOCUMENTS__PATH=str(data / "chroma"),
        OPENCHAT_AUTH__KEYS_URL=f"sqlite:///{data / 'keys.db'}",
        OPENCHAT_RESPONSES__STORE_URL=f"sqlite:///{data / 'responses.db'}",
        OPENCHAT_BATCH__STORE_URL=f"sqlite:///{data / 'batches.db'}",
        OPENCHAT_BATCH__FILES_DIR=str(data / "files"),
        OPENCHAT_BATCH__MAX_FILE_BYTES="4194304",  # so the 413 test sends only 4 MiB
        OPENCHAT_BATCH__POLL_INTERVAL_S="0.2",
        OPENCHAT_ADMIN_KEY=ADMIN_KEY,
        OPENCHAT_AUTH__DEFAULT_RPM="100000",
        OPENCHAT_AUTH__DEFAULT_TPM="100000000",
        OPENCHAT_AUTH__DEFAULT_MAX_CONCURRENCY="256",
        OPENCHAT_AUTH__RATE_WINDOW_S="3",  # so the rate-limit tests see a window pass
        # BentoML keeps Prometheus' multiprocess files under its home and wipes them at
        # start: each service gets its own, or concurrent services mix their metrics.
        BENTOML_HOME=str(data / "bentoml"),
        OPENCHAT_ENGINE__CPU_KV_CACHE_GIB="1",
        HF_HUB_OFFLINE="1",
        ANONYMIZED_TELEMETRY="False",
        BENTOML_DO_NOT_TRACK="true",
        PYTHONUNBUFFERED="1",
    )
    env.update(overrides)
    return env


@pytest.fixture(scope="module")
def postgres():
    """A throwaway PostgreSQL server for one test module (tests/postgres.py)."""
    from tests.postgres import running_postgres

    with running_postgres() as pg:
        yield pg


@pytest.fixture(scope="session")
def service(tmp_path_factory) -> RunningService:
    if not (DEV_MODEL / "config.json").exists():
        pytest.fail(f"dev model missing at {DEV_MODEL}: run `make install` (or make dev-model)")
    running = RunningService(service_env(), tmp_path_factory.mktemp("service") / "serve.log")
    try:
        running.wait_ready()
    except Exception:
        running.stop()
        raise
    yield running
    running.stop()


@pytest.fixture(scope="session")
def base_url(service: RunningService) -> str:
    return service.url


@pytest.fixture(scope="session")
def client(base_url: str):
    from openai import OpenAI

    return OpenAI(base_url=f"{base_url}/v1", api_key=ADMIN_KEY, max_retries=0, timeout=120)


@pytest.fixture(scope="session")
def http(base_url: str):
    with httpx.Client(base_url=base_url, timeout=120, headers=AUTH) as session:
        yield session
