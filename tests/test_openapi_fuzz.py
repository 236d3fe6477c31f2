"""End to end: schemathesis fuzzes the served OpenAPI spec (/openapi.json) of the running
service, bounded in time: no server error, every status and every JSON body as the spec
documents them. (It found a 500 on `{"type": {}}` in a Responses tool, now fixed.)"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ADMIN_KEY

pytestmark = pytest.mark.e2e
ST = Path(sys.executable).parent / "st"
CHECKS = ("not_a_server_error,status_code_conformance,response_schema_conformance,"
          "content_type_conformance")


def _schemathesis(spec_url: str, tmp_path, *options: str) -> None:
    """Run schemathesis over a served spec, bounded, with the checks above; fail on any."""
    run = subprocess.run(
        [str(ST), "run", spec_url, "--header", f"Authorization: Bearer {ADMIN_KEY}",
         "--checks", CHECKS, "--phases", "coverage,fuzzing", "--request-timeout", "60",
         "--seed", "1", *options],
        capture_output=True, text=True, timeout=600, cwd=tmp_path,
        env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "NO_COLOR": "1"},
    )
    report = run.stdout + run.stderr
    assert run.returncode == 0, report[-6000:]
    assert "generated" in report and not re.search(r"\b0 generated", report), report[-2000:]


def test_fuzzing_the_spec_finds_no_server_error_and_no_undocumented_answer(base_url,
                                                                             tmp_path):
    # Key management would mint keys at random; its routes are tested on their own.
    _schemathesis(f"{base_url}/openapi.json", tmp_path, "--max-examples", "15",
                  "--exclude-path-regex", "^/v1/admin/")


def test_docs_json_is_one_true_openapi_31_document(http):
    """BentoML's /docs.json (read by its Swagger UI) is our combined spec: valid 3.1, the
    typed APIs' errors in OpenAI's shape, no FastAPI 422 anywhere."""
    import jsonschema
    from schemathesis.specs.openapi.definitions import OPENAPI_31

    spec = http.get("/docs.json").json()
    jsonschema.Draft202012Validator(OPENAPI_31).validate(spec)
    assert spec["openapi"] == "3.1.0"
    assert {"/chat", "/generate", "/ask", "/extract", "/v1/chat/completions",
            "/v1/responses", "/readyz"} <= set(spec["paths"])
    error = {"$ref": "#/components/schemas/ErrorBody"}
    for path in ("/chat", "/extract", "/v1/chat/completions"):
        responses = spec["paths"][path]["post"]["responses"]
        assert {"400", "401", "429"} <= set(responses), (path, sorted(responses))
        assert all(answer["content"]["application/json"]["schema"] == error
                   for code, answer in responses.items() if code >= "400"), path
    assert '"422"' not in str(spec) and "'422'" not in str(spec)


def test_fuzzing_the_typed_apis_finds_no_server_error(base_url, tmp_path):
    _schemathesis(f"{base_url}/docs.json", tmp_path, "--max-examples", "10",
                  "--include-path-regex", "^/(chat|extract|ask|generate)$")
