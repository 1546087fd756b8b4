"""Docker end-to-end smoke test: build, serve, query, train, hot-swap under load, tear down.

    make docker-smoke            # or: python deploy/docker_smoke.py [--base-image IMAGE]

Steps, each printed with its outcome: build the `api` and `trainer` images with compose (their
sizes reported); `up -d` the `api` service and wait until Docker reports it healthy (cold start
timed); POST /fill-mask; start a client that polls /fill-mask on loopback throughout; run the
`trainer` profile, which trains a small checkpoint into the models volume and moves `current`;
wait until the running `api` serves the new version; stop the poller and require zero failed
requests; `down -v`.

The helpers here (compose command, environment, health wait) serve deploy/docker_scale_smoke.py
too. Deliberately not part of `make test`: it needs Docker and takes minutes. It talks only to
127.0.0.1, with a bounded number of requests.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
PROJECT = "bertserve-smoke"


def compose_cmd(project: str = PROJECT, file: str | None = None) -> list[str]:
    """docker-compose 1.x where installed (this build machine), else Compose v2."""
    files = ["-f", file] if file else []
    if shutil.which("docker-compose"):
        return ["docker-compose", "-p", project, *files]
    return ["docker", "compose", "-p", project, *files]


def docker_env(base_image: str | None, **extra: str) -> dict[str, str]:
    """The environment for compose: BASE_IMAGE (the offline machine's local base when
    ../shared/tools/local-docker.sh exists, else the public one) and TORCH_INDEX_URL."""
    base = base_image
    local_tool = ROOT.parent / "shared" / "tools" / "local-docker.sh"
    if base is None and local_tool.exists():
        base = subprocess.run(
            ["bash", str(local_tool)], text=True, capture_output=True, check=True
        ).stdout.split()[-1]
    env = dict(os.environ, BASE_IMAGE=base or "python:3.11-slim", **extra)
    if base and base.startswith("local/"):
        env["TORCH_INDEX_URL"] = ""  # offline: torch comes from the wheel baked into the base image
    return env


def image_mb(tag: str, env: dict[str, str]) -> int:
    """An image's size as `docker image inspect` reports it, in MB (10^6 bytes)."""
    size = run(["docker", "image", "inspect", tag, "--format", "{{.Size}}"], env, quiet=True)
    return round(int(size.strip()) / 1e6)


def wait_healthy(cids: list[str], env: dict[str, str], timeout: float = 300) -> None:
    """Until Docker reports every container healthy; SystemExit with their statuses if not."""
    deadline = time.time() + timeout
    health: list[str] = []
    while time.time() < deadline:
        health = run(
            ["docker", "inspect", "--format", "{{.State.Health.Status}}", *cids],
            env,
            quiet=True,
            echo=False,
        ).split()
        if health and all(h == "healthy" for h in health):
            return
        time.sleep(0.5)
    for cid in cids:
        run(["docker", "logs", "--tail", "40", cid], env, check=False)
    raise SystemExit(f"not healthy in {timeout:.0f} s (last statuses: {health})")


def run(
    args: list[str], env: dict[str, str], check: bool = True, quiet: bool = False, echo: bool = True
) -> str:
    if echo:
        print(f"$ {' '.join(args)}", flush=True)
    proc = subprocess.run(args, cwd=ROOT, env=env, text=True, capture_output=quiet)
    if check and proc.returncode != 0:
        if quiet:
            print(proc.stdout[-4000:], proc.stderr[-4000:], sep="\n")
        raise SystemExit(f"command failed ({proc.returncode}): {' '.join(args)}")
    return (proc.stdout or "") if quiet else ""


class Poller(threading.Thread):
    """Sends /fill-mask every `interval` seconds and records status and model version."""

    def __init__(self, url: str, interval: float = 0.2, limit: int = 20_000) -> None:
        super().__init__(daemon=True)
        self.url, self.interval, self.limit = url, interval, limit
        self.stop = threading.Event()
        self.results: list[tuple[int, str]] = []

    def run(self) -> None:
        with httpx.Client(timeout=30) as client:
            while not self.stop.is_set() and len(self.results) < self.limit:
                try:
                    r = client.post(
                        self.url, json={"inputs": "the cat sat on the [MASK].", "top_k": 3}
                    )
                    self.results.append((r.status_code, r.headers.get("x-model-version", "")))
                except httpx.HTTPError as exc:
                    self.results.append((0, type(exc).__name__))
                time.sleep(self.interval)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--base-image", default=None, help="BASE_IMAGE build arg (default: local or public)"
    )
    ap.add_argument("--port", type=int, default=18000)
    ap.add_argument("--train-steps", type=int, default=60)
    args = ap.parse_args(argv)

    env = docker_env(args.base_image, API_PORT=str(args.port))
    compose = compose_cmd()
    base_url = f"http://127.0.0.1:{args.port}"
    summary: dict = {"base_image": env["BASE_IMAGE"]}
    try:
        t0 = time.perf_counter()
        run([*compose, "--profile", "train", "build", "api", "trainer"], env)
        summary["build_s"] = round(time.perf_counter() - t0, 1)
        summary["image_mb"] = {
            "api": image_mb("bertserve-api:latest", env),
            "trainer": image_mb("bertserve-trainer:latest", env),
        }

        t0 = time.perf_counter()
        run([*compose, "up", "-d", "api"], env)
        cid = run([*compose, "ps", "-q", "api"], env, quiet=True).strip()
        wait_healthy([cid], env)
        summary["cold_start_to_healthy_s"] = round(time.perf_counter() - t0, 1)

        r = httpx.post(
            f"{base_url}/fill-mask", json={"inputs": "the cat sat on the [MASK]."}, timeout=30
        )
        print(f"POST /fill-mask -> {r.status_code} {r.headers.get('x-model-version')}")
        print(json.dumps(r.json(), indent=1)[:800])
        if r.status_code != 200:
            raise SystemExit("fill-mask failed")
        first_version = r.headers["x-model-version"]

        poller = Poller(f"{base_url}/fill-mask")
        poller.start()
        run(
            [
                *compose,
                "--profile",
                "train",
                "run",
                "--rm",
                "-e",
                "RUN_NAME=smoke-run",
                "trainer",
                "--config",
                "configs/bert_tiny.yaml",
                "--max-steps",
                str(args.train_steps),
                "--save-every",
                str(args.train_steps),
            ],
            env,
        )
        deadline = time.time() + 120
        new_version = first_version
        while time.time() < deadline and new_version == first_version:
            time.sleep(1)
            new_version = httpx.get(f"{base_url}/info", timeout=10).headers.get(
                "x-model-version", first_version
            )
        time.sleep(2)  # a few more polled requests on the new model
        poller.stop.set()
        poller.join()
        statuses = [s for s, _ in poller.results]
        versions = sorted({v for _, v in poller.results if v})
        failed = sum(1 for s in statuses if s != 200)
        summary.update(
            {
                "first_version": first_version,
                "new_version": new_version,
                "polled_requests": len(statuses),
                "failed_requests": failed,
                "versions_seen_by_poller": versions,
            }
        )
        if new_version == first_version:
            raise SystemExit("the api did not switch to the trained checkpoint")
        if failed:
            raise SystemExit(f"{failed} polled requests failed during the swap")
        metrics = httpx.get(f"{base_url}/metrics", timeout=10).text
        summary["reload_metrics"] = [
            m for m in metrics.splitlines() if m.startswith("bert_model_reloads_total")
        ]
    finally:
        t0 = time.perf_counter()
        run([*compose, "--profile", "train", "down", "-v", "--remove-orphans"], env, check=False)
        summary["down_s"] = round(time.perf_counter() - t0, 1)
        print(json.dumps(summary, indent=2))
    print("docker smoke: OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
