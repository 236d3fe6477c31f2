"""`bentoml build` makes a bento on this machine from bentofile.yaml, with the committed
lock as its requirements (no re-resolution) and the service's sources."""

from __future__ import annotations

import os
import subprocess
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _requirements(text: str) -> set[str]:
    return {line.strip() for line in text.splitlines()
            if line.strip() and not line.lstrip().startswith(("#", "-"))}


@pytest.mark.timeout(300)
def test_bentoml_build_packs_the_locked_environment(tmp_path):
    env = {**os.environ, "BENTOML_HOME": str(tmp_path / "home"),
           "BENTOML_DO_NOT_TRACK": "true", "OPENCHAT_MODEL": "/unused-at-build-time"}
    # `make bento`, as docs/deployment.md says: the project's wheel, then `bentoml build`.
    built = subprocess.run(["make", "bento"], cwd=ROOT, env=env,
                           capture_output=True, text=True, timeout=280)
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    [bento] = [p for p in (tmp_path / "home" / "bentos" / "openchat").iterdir() if p.is_dir()]
    packed = (bento / "env" / "python" / "requirements.txt").read_text()
    locked = (ROOT / "requirements" / "lock.txt").read_text()
    # BentoML appends its own pin (the same bentoml==1.4.40 the lock has): nothing else.
    assert _requirements(packed) == _requirements(locked)
    assert not (bento / "env" / "python" / "requirements.lock.txt").exists()
    sources = {p.relative_to(bento / "src").as_posix() for p in (bento / "src").rglob("*.py")}
    assert {"service.py", "openchat/api/middleware.py", "tools/sql.py"} <= sources
    assert not any(s.startswith("tests/") for s in sources)
    assert (bento / "src" / "configuration.yaml").exists()
    # The project's wheel, whose entry point vLLM's engine processes load (engine_spin.py).
    [wheel] = (bento / "env" / "python" / "wheels").glob("openchat_service-*.whl")
    with zipfile.ZipFile(wheel) as packed_wheel:
        [entry_points] = [n for n in packed_wheel.namelist() if n.endswith("entry_points.txt")]
        assert ("openchat_engine_spin = openchat.generation.engine_spin:configure"
                in packed_wheel.read(entry_points).decode())
