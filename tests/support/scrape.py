"""Reading ``GET /metrics`` as Prometheus would, and checking it with Prometheus's own
``promtool``."""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from collections.abc import Callable

import pytest
import requests

SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)$")
Samples = dict[str, float]


def exposition(base: str) -> str:
    """The body of ``/metrics``, fetched without any API key."""
    response = requests.get(base + "/metrics", timeout=10)
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    return response.text


def parse(text: str) -> Samples:
    """``name{labels}`` -> value of every sample in ``text``."""
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            match = SAMPLE.match(line)
            assert match, f"not Prometheus text format: {line!r}"
            samples[match[1] + (match[2] or "")] = float(match[3])
    return samples


def metrics(base: str) -> Samples:
    return parse(exposition(base))


def counters(samples: Samples) -> Samples:
    """The samples that must never decrease: counters and the histogram's."""
    return {
        name: value
        for name, value in samples.items()
        if name.split("{")[0].endswith(("_total", "_bucket", "_count", "_sum"))
    }


def wait_metrics(base: str, done: Callable[[Samples], bool], timeout: float = 15) -> Samples:
    """The first scrape for which ``done`` holds (processes write their counts about once
    a second), failing after ``timeout`` seconds with the last one."""
    deadline = time.monotonic() + timeout
    while not done(sample := metrics(base)):
        assert time.monotonic() < deadline, f"not within {timeout} s; last scrape: {sample}"
        time.sleep(0.1)
    return sample


def promtool_check(text: str) -> None:
    """``promtool check metrics`` must accept ``text`` without a complaint."""
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed (Debian's prometheus package; .ci/run installs it)")
    done = subprocess.run(
        [promtool, "check", "metrics"],
        input=text.encode(),
        capture_output=True,
        timeout=30,
        check=False,
    )
    report = (done.stdout + done.stderr).decode()
    assert (done.returncode, report.strip()) == (0, ""), f"promtool: {report}\n{text}"
