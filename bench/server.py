"""The server under test: a subprocess on a free loopback port, healthy before use, always stopped.

    with Server("ours", ["app.cli", "--checkpoint", str(ckpt)], log=RESULTS / "ours.log") as s:
        httpx.post(f"{s.url}/fill-mask", json=...)
        s.cpu_seconds()  # the server's own CPU time so far, for CPU per request

Shared by the serving benchmarks (bench_serve, bench_embed, bench_ui, bench_rerank, and
bench_precision at each precision): each starts our server, and its peer
(bench/hf_baseline_server.py, infinity-emb), the same way, so that neither gets a different
start-up, environment or shutdown.

Deliberately not here: load (bench/wrk.py), checking answers (each benchmark knows its
endpoint), and anything beyond loopback: the servers listen on 127.0.0.1 only.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from bench.common import ROOT

HOST = "127.0.0.1"  # loopback only
START_TIMEOUT_S = 180  # loading base-size models on a busy 2-core machine takes a while


def free_port() -> int:
    """A TCP port nothing listens on right now (the OS picks it)."""
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


class Server:
    """A server subprocess on a free loopback port; always terminated on exit.

    By default ``python -m <argv>`` with this interpreter; ``command`` runs another program
    (another venv's server) with ``argv`` as its arguments, ``env`` adds to its environment.
    Either way ``--port N`` is appended and ``/health`` must answer 200. Its output goes to
    ``log``. ``BERT_SERVE_*`` variables of the caller are not passed on, so a developer's own
    settings cannot change what is measured. ``start_timeout_s``: how long it may take to answer
    /health (a server that times its precisions at load, ``--precision auto`` on BERT-base, wants
    more than the default).
    """

    def __init__(
        self,
        name: str,
        argv: list[str],
        *,
        log: Path,
        command: list[str] | None = None,
        env: dict[str, str] | None = None,
        start_timeout_s: float = START_TIMEOUT_S,
    ) -> None:
        self.name = name
        self.port = free_port()
        self.argv = [*argv, "--port", str(self.port)]
        self.command = [sys.executable, "-m"] if command is None else command
        self.extra_env = env or {}
        self.url = f"http://{HOST}:{self.port}"
        self.proc: subprocess.Popen | None = None
        self.log = log
        self.start_timeout_s = start_timeout_s

    def __enter__(self) -> Server:
        env = {k: v for k, v in os.environ.items() if not k.startswith("BERT_SERVE_")}
        env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
        env.update(self.extra_env)
        self.log.parent.mkdir(parents=True, exist_ok=True)
        self._log_file = self.log.open("w")
        self.proc = subprocess.Popen(
            [*self.command, *self.argv],
            cwd=ROOT,
            env=env,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
        )
        try:
            self._wait_healthy()
        except BaseException:
            self.__exit__()  # __exit__ is not called when __enter__ raises: stop it here
            raise
        return self

    def _wait_healthy(self) -> None:
        import httpx

        deadline = time.monotonic() + self.start_timeout_s
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited early; see {self.log}")
            try:
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name} did not become healthy; see {self.log}")
            time.sleep(0.25)

    def cpu_seconds(self) -> float | None:
        """User + system CPU time of the server process so far (Linux /proc), else None."""
        try:
            fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, AttributeError):
            return None
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log_file.close()
