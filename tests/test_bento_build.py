"""`bentoml build` makes a bento on this machine from bentofile.yaml, with the committed
lock as its requirements (no re-resolution) and the service's sources."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BENTOML = Path(sys.executable).parent / "bentoml"


def _requirements(text: str) -> set[str]:
    return {line.strip() for line in text.splitlines()
            if line.strip() and not line.lstrip().startswith(("#", "-"))}


@pytest.mark.timeout(300)
def test_bentoml_build_packs_the_locked_environment(tmp_path):
    env = {**os.environ, "BENTOML_HOME": str(tmp_path / "home"),
           "BENTOML_DO_NOT_TRACK": "true", "OPENCHAT_MODEL": "/unused-at-build-time"}
    built = subprocess.run([str(BENTOML), "build", "--output", "tag"], cwd=ROOT, env=env,
                           capture_output=True, text=True, timeout=280)
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    tag = built.stdout.strip().splitlines()[-1].removeprefix("__tag__:")
    name, version = tag.split(":")
    bento = tmp_path / "home" / "bentos" / name / version
    packed = (bento / "env" / "python" / "requirements.txt").read_text()
    locked = (ROOT / "requirements" / "lock.txt").read_text()
    # BentoML appends its own pin (the same bentoml==1.4.40 the lock has): nothing else.
    assert _requirements(packed) == _requirements(locked)
    assert not (bento / "env" / "python" / "requirements.lock.txt").exists()
    sources = {p.relative_to(bento / "src").as_posix() for p in (bento / "src").rglob("*.py")}
    assert {"service.py", "openchat/api/middleware.py", "tools/sql.py"} <= sources
    assert not any(s.startswith("tests/") for s in sources)
    assert (bento / "src" / "configuration.yaml").exists()
