"""Unit tests: settings come from configuration.yaml, then OPENCHAT_* variables override."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from openchat.config import DEFAULT_CONFIG_FILE, Settings
from openchat.generation.engine import cpu_thread_binding


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    import os

    for key in list(os.environ):
        if key.startswith("OPENCHAT_"):
            monkeypatch.delenv(key)


def test_repository_configuration_loads():
    settings = Settings()
    assert settings.model == "openchat/openchat-3.5-0106"
    assert settings.service.port == 11402
    assert settings.service.resources == {"cpu": "4", "memory": "25Gi"}
    assert settings.served_model_name == "openchat-3.5"
    assert settings.preset_for_model("openchat-3.5-math").condition == "Math Correct"
    assert DEFAULT_CONFIG_FILE.exists()


def test_environment_overrides_yaml(monkeypatch):
    monkeypatch.setenv("OPENCHAT_MODEL", "/models/other")
    monkeypatch.setenv("OPENCHAT_ENGINE__MAX_MODEL_LEN", "4096")
    settings = Settings()
    assert settings.model == "/models/other"
    assert settings.engine.max_model_len == 4096


def test_config_file_can_be_swapped(monkeypatch, tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text(
        "model: /m\npresets:\n  only:\n    model_id: x\n    condition: Math Correct\n"
        "default_preset: only\n"
    )
    monkeypatch.setenv("OPENCHAT_CONFIG", str(config))
    settings = Settings()
    assert settings.served_model_name == "x"
    assert list(settings.presets) == ["only"]


@pytest.mark.parametrize(
    "yaml_text",
    [
        "engine:\n  dtype: int3\n",
        "engine:\n  unknown_knob: 1\n",
        "default_preset: missing\n",
        "presets:\n  a:\n    model_id: same\n  b:\n    model_id: same\ndefault_preset: a\n",
        "presets:\n  a:\n    model_id: m\n    condition: Poetry Correct\ndefault_preset: a\n",
        "presets:\n  a:\n    model_id: m\n    sampling:\n      temperature: 9\ndefault_preset: a\n",
    ],
)
def test_invalid_configuration_is_refused(monkeypatch, tmp_path, yaml_text):
    config = tmp_path / "bad.yaml"
    config.write_text(yaml_text)
    monkeypatch.setenv("OPENCHAT_CONFIG", str(config))
    with pytest.raises(ValidationError):
        Settings()


def test_cpu_threads_follow_declared_cpus_capped_by_host(monkeypatch):
    monkeypatch.setattr("openchat.generation.engine._available_cpus", lambda: [0, 1])
    assert cpu_thread_binding(4, "auto") == "0"        # 2 host cores, one left for HTTP
    assert cpu_thread_binding(1, "auto") == "0"
    assert cpu_thread_binding(4, 2) == "0,1"
    monkeypatch.setattr("openchat.generation.engine._available_cpus", lambda: list(range(16)))
    assert cpu_thread_binding(4, "auto") == "0,1,2"
