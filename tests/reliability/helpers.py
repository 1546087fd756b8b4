"""Subprocess helpers for the reliability suite: a free port, a real ``bert-serve`` process, its
readiness and its memory.

``ServeProcess`` runs ``python -m app.cli`` (the ``bert-serve`` entry point) on a loopback port
with one torch thread, its output in a log file (a pipe nobody reads would fill up and block the
server during a long soak). It never outlives the test: ``stop`` (or leaving the ``with`` block)
kills it if it is still running.

Not a test module, and deliberately not a fixture factory: each test decides when the server
starts and how it is stopped, since stopping is what some of them test.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import psutil

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_bytes(pid: int) -> int:
    """Resident set size of process ``pid``."""
    return psutil.Process(pid).memory_info().rss


def metric_value(metrics_text: str, name: str, **labels: str) -> float:
    """The value of one sample in Prometheus exposition text (0.0 when absent)."""
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    pattern = re.escape(name) + (r"\{" + re.escape(want) + r"\}" if labels else "") + r" (\S+)$"
    for line in metrics_text.splitlines():
        m = re.match(pattern, line)
        if m:
            return float(m.group(1))
    return 0.0


class ServeProcess:
    """A ``bert-serve`` subprocess on a free loopback port; use as a context manager."""

    def __init__(self, log_path: Path, *args: str, **settings: Any) -> None:
        """``settings`` become flags (``max_wait_ms=5`` -> ``--max-wait-ms 5``)."""
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        flags = ["--port", str(self.port), "--torch-threads", "1", "--log-level", "warning"]
        for key, value in settings.items():
            flags += ["--" + key.replace("_", "-"), str(value)]
        self.argv = [sys.executable, "-m", "app.cli", *flags, *args]
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> ServeProcess:
        # A clean server environment, but for the precision pin: the suite's answers assume the
        # precision tests/conftest.py sets (or the one a CI pass forces), whatever this CPU is.
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith("BERT_SERVE_") or k == "BERT_SERVE_PRECISION"
        }
        env["PYTHONPATH"] = str(REPO)
        env["OMP_NUM_THREADS"] = "1"
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                self.argv, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT
            )
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def output(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def wait_ready(self, timeout_s: float = 90.0) -> float:
        """Poll ``/health`` until it answers 200; seconds it took. Fails if the process dies."""
        assert self.proc is not None
        t0 = time.monotonic()
        while True:
            assert self.proc.poll() is None, f"bert-serve exited early:\n{self.output()}"
            try:
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return time.monotonic() - t0
            except httpx.TransportError:
                pass
            assert time.monotonic() - t0 < timeout_s, f"not ready in {timeout_s}s:\n{self.output()}"
            time.sleep(0.1)

    def rss(self) -> int:
        return rss_bytes(self.pid)

    def stop(self) -> None:
        """Kill the process if it still runs (tests that stop it gracefully do so themselves)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)

    def __enter__(self) -> ServeProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
