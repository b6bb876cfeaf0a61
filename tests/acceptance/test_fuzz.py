"""schemathesis fuzzes every operation of the OpenAPI document against a real ``ntq web``
(real PostgreSQL and Redis), with an API key: no 5xx, and every status, content type,
header and body as documented.

The run is bounded (``NTQ_FUZZ_EXAMPLES`` test cases per operation, default 50) so CI
stays quick; ``NTQ_FUZZ_EXAMPLES=1000`` makes a longer one. Its summary is printed to the
terminal, so it shows in CI's log.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from ntq.store.apps import Credentials
from tests.conftest import module_stack
from tests.support.procs import Api, Stack

# No worker: the fuzzed tasks are stored and read back, never delivered to the made-up
# URLs schemathesis generates. So no task has a response, and schemathesis warns that
# GET /tasks/{id}/response always answered 404; its 200 is checked in process
# (tests/integration/test_openapi.py).
stack = module_stack(worker=False)

CHECKS = (
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_headers_conformance",
    "response_schema_conformance",
    "unsupported_method",
    "ignored_auth",
)
CONFIG = Path(__file__).with_name("schemathesis.toml")
EXAMPLES = int(os.environ.get("NTQ_FUZZ_EXAMPLES", "50"))
# About a second per example here (2 cores), with room to spare.
TIMEOUT = 300 + 3 * EXAMPLES


def schemathesis(stack: Stack, key: str, workdir: Path) -> subprocess.CompletedProcess[str]:
    """``st run`` over the whole document. One worker: hypothesis parses lambdas' source
    with ``ast``, which CPython 3.11 can fail to do from two threads at once
    (python/cpython#106905: "AST constructor recursion depth mismatch")."""
    st = Path(sys.executable).with_name("st")
    # From a file: given the document's URL, schemathesis would leave that operation out.
    document = workdir / "openapi.json"
    document.write_bytes(requests.get(f"{stack.url}/openapi.json", timeout=10).content)
    return subprocess.run(
        [
            str(st),
            "--config-file",
            str(CONFIG),
            "run",
            str(document),
            "--url",
            stack.url,
            "--checks",
            ",".join(CHECKS),
            "--max-examples",
            str(EXAMPLES),
            "--header",
            f"Authorization: Bearer {key}",
            "--workers",
            "1",
            "--request-timeout",
            "70",
            "--no-color",
            "--report",
            "junit",
            "--report-dir",
            str(workdir),
        ],
        # In the test's directory: schemathesis and hypothesis keep caches where they run.
        cwd=workdir,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )


@pytest.mark.timeout(TIMEOUT + 60)
def test_schemathesis_finds_no_failure(
    stack: Stack, app: tuple[Api, Credentials], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, creds = app
    result = schemathesis(stack, creds.api_key, tmp_path)
    with capsys.disabled():
        print(
            f"\n--- schemathesis ({EXAMPLES} examples per operation)\n{result.stdout}"
            f"{result.stderr}"
        )
    assert result.returncode == 0, "schemathesis found failures (its summary is above)"
    document = json.loads((tmp_path / "openapi.json").read_text())
    operations = sum(
        method != "parameters" for item in document["paths"].values() for method in item
    )
    assert f"Tested: {operations}\n" in result.stdout  # every operation, none skipped
