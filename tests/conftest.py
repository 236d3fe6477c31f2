"""Shared fixtures. End-to-end tests start the real service once per session: `bentoml
serve` with the in-process vLLM engine on the dev model, on a free loopback port."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parent.parent
DEV_MODEL = Path(os.environ.get("OPENCHAT_TEST_MODEL", ROOT / ".models" / "openchat-dev"))
BENTOML = Path(sys.executable).parent / "bentoml"
STARTUP_SECONDS = 420

# OpenChat's reference ids for one user turn "Hi" (BOS, "GPT4 Correct User:", "Hi",
# <|end_of_turn|>, "GPT4 Correct Assistant:"), from the model authors' template.
REFERENCE_HI_IDS = [1, 420, 6316, 28781, 3198, 3123, 1247, 28747, 15359, 32000,
                    420, 6316, 28781, 3198, 3123, 21631, 28747]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENCHAT_")}
    env.update(
        OPENCHAT_MODEL=str(DEV_MODEL),
        OPENCHAT_ENGINE__CPU_KV_CACHE_GIB="1",
        HF_HUB_OFFLINE="1",
        ANONYMIZED_TELEMETRY="False",
        BENTOML_DO_NOT_TRACK="true",
        PYTHONUNBUFFERED="1",
    )
    env.update(overrides)
    return env


@pytest.fixture(scope="session")
def service(tmp_path_factory) -> RunningService:
    if not (DEV_MODEL / "config.json").exists():
        pytest.fail(f"dev model missing at {DEV_MODEL}: run `make install` (or make dev-model)")
    data = tmp_path_factory.mktemp("service")
    env = service_env(OPENCHAT_SQL__URL=f"sqlite:///{data / 'shop.db'}",
                      OPENCHAT_DOCUMENTS__PATH=str(data / "chroma"))
    running = RunningService(env, data / "serve.log")
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

    return OpenAI(base_url=f"{base_url}/v1", api_key="not-needed", max_retries=0, timeout=120)


@pytest.fixture(scope="session")
def http(base_url: str):
    with httpx.Client(base_url=base_url, timeout=120) as session:
        yield session
