"""Scale-out smoke test: api replicas behind nginx (docker-compose.scale.yml), run for real.

    make docker-scale-smoke      # or: python deploy/docker_scale_smoke.py [--replicas 3]

Steps, each printed with its outcome, figures written to deploy/results/docker_scale_smoke.json:

1. build the `api`, `trainer` and `lb` images (sizes reported); `up -d --scale api=3`; every
   replica healthy (timed);
2. same answers: /fill-mask and /embed from every replica (the trimmed `api` image) against a
   local `bert-serve` on this machine's full, untrimmed install;
3. spread: several hundred requests through the balancer land on every replica (X-Replica);
4. from here to the end a background load runs through the balancer; publish: the `trainer`
   trains and moves `current`; each replica's /info is polled directly until it serves the new
   version (seconds after the publish, against a stated bound);
5. one replica is killed (`docker kill`) and removed, another restarted (`docker restart`:
   SIGTERM, drain, start), compose starts a replacement for the killed one; all healthy again,
   and the restarted and the new replica answer through the balancer. Then one replica more, at
   an address nginx has never seen, must get requests (nginx resolves the name again), and the
   scale back to N stops it gracefully;
6. slow clients: 900 connections to the balancer send a request header one line every 5 s; the
   balancer must close them all after its client_header_timeout, while the load keeps passing.
   A control group opened on a replica directly is still open at the end (the replicas have no
   header timeout, which is why they sit behind nginx);
7. zero failed requests across all of it; `down -v`.

Deliberately not part of `make test`: it needs Docker and takes minutes. It talks only to
127.0.0.1 and to the containers' addresses on the compose network, with a bounded load.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import resource
import socket
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
from docker_smoke import ROOT, compose_cmd, docker_env, image_mb, run, wait_healthy

PROJECT = "bertserve-scale"
COMPOSE_FILE = "docker-compose.scale.yml"
RESULTS = ROOT / "deploy" / "results" / "docker_scale_smoke.json"
SWITCH_BOUND_S = 20.0  # watch_interval_s (2 s) + loading and validating the checkpoint, with room
HEADER_TIMEOUT_S = 10.0  # deploy/nginx.conf client_header_timeout
FILL = {"inputs": ["the cat sat on the [MASK].", "paris is the [MASK] of france."], "top_k": 5}
EMBED = {"inputs": ["a cat sat on the mat", "the stock market fell sharply today"]}


@dataclass
class Record:
    t: float  # time.time() when the response (or the error) came
    status: int  # 0: no HTTP answer at all
    version: str
    replica: str  # the address that answered (the last one of X-Replica)
    upstream_status: str  # X-Upstream-Status: "200", or "503, 200" after a retry
    latency_s: float


class Load:
    """`threads` clients sending /fill-mask and /embed in turn through the balancer."""

    def __init__(self, url: str, threads: int = 4, pause: float = 0.05) -> None:
        self.url, self.pause = url, pause
        self.records: list[Record] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]

    def start(self) -> Load:
        for t in self._threads:
            t.start()
        return self

    def stop(self) -> list[Record]:
        self._stop.set()
        for t in self._threads:
            t.join()
        return self.records

    def _run(self) -> None:
        with httpx.Client(timeout=60) as client:
            n = 0
            while not self._stop.is_set():
                n += 1
                path, body = ("/fill-mask", FILL) if n % 2 else ("/embed", EMBED)
                t0 = time.perf_counter()
                try:
                    r = client.post(self.url + path, json=body)
                    rec = Record(
                        time.time(),
                        r.status_code,
                        r.headers.get("x-model-version", ""),
                        r.headers.get("x-replica", "").split(",")[-1].strip(),
                        r.headers.get("x-upstream-status", ""),
                        time.perf_counter() - t0,
                    )
                except httpx.HTTPError as exc:
                    rec = Record(
                        time.time(), 0, type(exc).__name__, "", "", time.perf_counter() - t0
                    )
                with self._lock:
                    self.records.append(rec)
                time.sleep(self.pause)

    def between(self, t0: float, t1: float | None = None) -> list[Record]:
        with self._lock:
            return [r for r in self.records if r.t >= t0 and (t1 is None or r.t < t1)]


def summarize(records: list[Record], names: dict[str, str]) -> dict:
    """Counts, failures, retries, per-replica counts (by container name) and latency."""
    lat = sorted(r.latency_s * 1000 for r in records)
    per: dict[str, int] = {}
    for r in records:
        name = names.get(r.replica.rsplit(":", 1)[0], r.replica or "none")
        per[name] = per.get(name, 0) + 1
    return {
        "requests": len(records),
        "failed": sum(r.status != 200 for r in records),
        "failures": sorted({f"{r.status} {r.version}" for r in records if r.status != 200})[:5],
        "retried": sum("," in r.upstream_status for r in records),
        "per_replica": dict(sorted(per.items())),
        "latency_ms": {
            "p50": round(statistics.median(lat), 1) if lat else None,
            "p99": round(lat[int(0.99 * (len(lat) - 1))], 1) if lat else None,
            "max": round(lat[-1], 1) if lat else None,
        },
    }


class Replicas:
    """The api containers of the project: container id -> (name, address)."""

    def __init__(self, compose: list[str], env: dict[str, str]) -> None:
        self.compose, self.env = compose, env

    def ids(self) -> list[str]:
        return run([*self.compose, "ps", "-q", "api"], self.env, quiet=True).split()

    def describe(self, cids: list[str]) -> dict[str, tuple[str, str]]:
        fmt = "{{.Id}} {{.Name}} {{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}"
        out = run(["docker", "inspect", "--format", fmt, *cids], self.env, quiet=True)
        rows = [line.split() for line in out.splitlines() if line.strip()]
        return {r[0][:12]: (r[1].lstrip("/"), r[2] if len(r) > 2 else "") for r in rows}

    def running(self) -> dict[str, tuple[str, str]]:
        cids = self.ids()
        return self.describe(cids) if cids else {}


def version_of(address: str) -> str:
    """The model version one replica serves (its /info, directly, not through the balancer)."""
    try:
        r = httpx.get(f"http://{address}:8000/info", timeout=5)
        return r.headers.get("x-model-version", "") if r.status_code == 200 else ""
    except httpx.HTTPError:
        return ""


def healthy(base_url: str) -> bool:
    try:
        return httpx.get(f"{base_url}/health", timeout=5).status_code == 200
    except httpx.HTTPError:
        return False


def answers(base_url: str) -> tuple[dict, list]:
    fill = httpx.post(f"{base_url}/fill-mask", json=FILL, timeout=30)
    embed = httpx.post(f"{base_url}/embed", json=EMBED, timeout=30)
    fill.raise_for_status()
    embed.raise_for_status()
    return fill.json(), embed.json()


def _leaves(tree: object) -> list:
    """The dicts (fill-mask candidates) or numbers (embeddings) of nested lists, in order."""
    if isinstance(tree, list):
        return [leaf for item in tree for leaf in _leaves(item)]
    return [tree]


def compare(a: tuple[dict, list], b: tuple[dict, list]) -> dict:
    """Fill-mask tokens must agree; the largest score and embedding differences are reported."""
    fill_a, fill_b = _leaves(a[0]["predictions"]), _leaves(b[0]["predictions"])
    embed_a, embed_b = _leaves(a[1]), _leaves(b[1])
    return {
        "fill_mask_tokens_equal": [p["token"] for p in fill_a] == [q["token"] for q in fill_b],
        "fill_mask_max_score_diff": max(
            abs(p["score"] - q["score"]) for p, q in zip(fill_a, fill_b, strict=True)
        ),
        "embed_max_abs_diff": max(abs(x - y) for x, y in zip(embed_a, embed_b, strict=True)),
    }


def local_answers(port: int) -> tuple[dict, list]:
    """Answers of `bert-serve` from this checkout's own environment (full torch install)."""
    proc = subprocess.Popen(
        [
            str(Path(sys.executable).with_name("bert-serve")),
            "--checkpoint",
            "checkpoints/default",
            "--port",
            str(port),
            "--log-level",
            "warning",
        ],
        cwd=ROOT,
    )
    try:
        deadline = time.time() + 120
        while not healthy(f"http://127.0.0.1:{port}") and time.time() < deadline:
            time.sleep(0.5)
        return answers(f"http://127.0.0.1:{port}")
    finally:
        proc.terminate()
        proc.wait(timeout=30)


async def _slow_client(host: str, port: int, interval: float, hold: float) -> float | None:
    """One connection sending a request header a line every `interval` s; the seconds after
    which the server closed it, or None when it was still open after `hold` s."""
    t0 = time.monotonic()
    try:
        reader, writer = await asyncio.open_connection(host, port)
    except OSError:
        return 0.0
    writer.write(b"POST /fill-mask HTTP/1.1\r\nHost: bertserve\r\n")

    async def trickle() -> None:
        n = 0
        with contextlib.suppress(OSError):
            while True:
                await asyncio.sleep(interval)
                writer.write(b"X-Slow-%d: 1\r\n" % n)
                await writer.drain()
                n += 1

    sender = asyncio.create_task(trickle())
    closed: float | None = None
    try:
        async with asyncio.timeout(hold):
            while True:
                if not await reader.read(4096):  # EOF: the server closed the connection
                    break
            closed = time.monotonic() - t0
    except TimeoutError:
        closed = None
    except OSError:  # reset
        closed = time.monotonic() - t0
    sender.cancel()
    writer.transport.abort()
    return closed


async def slow_clients(
    targets: list[tuple[str, int, int]], interval: float, hold: float
) -> list[list[float | None]]:
    """For each (host, port, count): open `count` slow connections (in batches) and wait."""
    groups = []
    for host, port, count in targets:
        tasks = []
        for i in range(count):
            tasks.append(asyncio.create_task(_slow_client(host, port, interval, hold)))
            if i % 100 == 99:
                await asyncio.sleep(0.05)
        groups.append(tasks)
    return [list(await asyncio.gather(*tasks)) for tasks in groups]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--base-image", default=None, help="BASE_IMAGE build arg (default: local or public)"
    )
    ap.add_argument("--port", type=int, default=18080, help="the balancer's host port")
    ap.add_argument("--replicas", type=int, default=3)
    ap.add_argument("--spread-requests", type=int, default=600)
    ap.add_argument("--train-steps", type=int, default=60)
    ap.add_argument("--slow-clients", type=int, default=900)
    ap.add_argument("--slow-control", type=int, default=100, help="slow clients on one replica")
    ap.add_argument("--no-build", action="store_true", help="use the images already built")
    args = ap.parse_args(argv)

    # ~1,000 slow-client sockets at once: more than the common soft limit of 1024 descriptors.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = args.slow_clients + args.slow_control + 512
    if soft < want:
        limit = want if hard == resource.RLIM_INFINITY else min(want, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (limit, hard))
    env = docker_env(args.base_image, LB_PORT=str(args.port))
    compose = compose_cmd(PROJECT, COMPOSE_FILE)
    lb = f"http://127.0.0.1:{args.port}"
    replicas = Replicas(compose, env)
    names: dict[str, str] = {}  # address -> container name, for every replica seen
    cli = compose[: compose.index("-p")]  # docker-compose, or docker compose
    summary: dict = {
        "compose": " ".join(cli)
        + " "
        + run([*cli, "version", "--short"], env, quiet=True, check=False).strip(),
        "base_image": env["BASE_IMAGE"],
        "replicas": args.replicas,
    }
    load: Load | None = None
    t_start = time.time()

    def remember() -> dict[str, tuple[str, str]]:
        current = replicas.running()
        names.update({addr: name for name, addr in current.values()})
        return current

    try:
        # 1. Build and start.
        if not args.no_build:
            t0 = time.perf_counter()
            run([*compose, "--profile", "train", "build", "api", "lb", "trainer"], env)
            summary["build_s"] = round(time.perf_counter() - t0, 1)
        summary["image_mb"] = {
            tag: image_mb(f"bertserve-{tag}:latest", env) for tag in ("api", "trainer", "lb")
        }
        print(f"images: {summary['image_mb']}", flush=True)
        t0 = time.perf_counter()
        run([*compose, "up", "-d", "--scale", f"api={args.replicas}"], env)
        wait_healthy(replicas.ids(), env)
        summary["up_to_all_healthy_s"] = round(time.perf_counter() - t0, 1)
        current = remember()
        if len(current) != args.replicas:
            raise SystemExit(f"expected {args.replicas} replicas, found {len(current)}")
        print(f"replicas: {sorted(current.values())}", flush=True)

        # 2. Same answers: every replica alike, and like the full local install.
        per_replica = [answers(f"http://{addr}:8000") for _, addr in current.values()]
        reference = local_answers(free_port())
        same = {
            "reference": "bert-serve from this checkout's .venv (untrimmed torch), same checkpoint",
            "replicas_identical": all(a == per_replica[0] for a in per_replica),
            **compare(per_replica[0], reference),
        }
        summary["same_answers"] = same
        print(f"same answers: {same}", flush=True)
        if not (
            same["replicas_identical"]
            and same["fill_mask_tokens_equal"]
            and same["fill_mask_max_score_diff"] < 1e-5
            and same["embed_max_abs_diff"] < 1e-5
        ):
            raise SystemExit("the api image does not give the local install's answers")

        # 3. Spread: a fixed number of requests through the balancer.
        deadline = time.time() + 30
        while not healthy(lb):
            if time.time() > deadline:
                raise SystemExit("the balancer does not answer /health")
            time.sleep(0.5)
        spread = Load(lb, threads=6, pause=0.0).start()
        while len(spread.records) < args.spread_requests:
            time.sleep(0.1)
        spread_records = spread.stop()
        summary["spread"] = summarize(spread_records, names)
        print(f"spread: {summary['spread']}", flush=True)
        if len(summary["spread"]["per_replica"]) != args.replicas:
            raise SystemExit("the load did not land on every replica")

        # 4. Publish under load; each replica polled directly until it serves the new version.
        load = Load(lb).start()
        first_version = version_of(next(iter(current.values()))[1])
        train = subprocess.Popen(
            [
                *compose,
                "--profile",
                "train",
                "run",
                "--rm",
                "-T",
                "-e",
                "RUN_NAME=scale-run",
                "trainer",
                "--config",
                "configs/bert_tiny.yaml",
                "--max-steps",
                str(args.train_steps),
                "--save-every",
                str(args.train_steps),
                "--progress_bar",
                "false",
            ],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        t_publish = None
        t_train = time.time()
        assert train.stdout is not None
        for line in train.stdout:
            print(f"  trainer | {line}", end="", flush=True)
            if line.startswith("published ") and t_publish is None:
                t_publish = time.time()
        if train.wait() != 0 or t_publish is None:
            raise SystemExit("the trainer did not publish")
        switched: dict[str, float] = {}
        new_version = ""
        while len(switched) < len(current) and time.time() - t_publish < 2 * SWITCH_BOUND_S:
            for name, addr in current.values():
                v = version_of(addr)
                if name not in switched and v.startswith("scale-run"):
                    switched[name] = round(time.time() - t_publish, 2)
                    new_version = v
            time.sleep(0.2)
        time.sleep(3)  # a few more requests on the new model
        t_after = time.time()
        publish = summarize(load.between(t_train, t_after), names)
        late = [
            r for r in load.between(t_publish + max(switched.values(), default=0) + 0.5, t_after)
        ]
        publish.update(
            {
                "first_version": first_version,
                "new_version": new_version,
                "train_and_publish_s": round(t_publish - t_train, 1),
                "replica_switch_s": dict(sorted(switched.items())),
                "bound_s": SWITCH_BOUND_S,
                "old_version_answers_after_last_switch": sum(
                    r.version != new_version for r in late
                ),
            }
        )
        summary["publish"] = publish
        print(f"publish: {publish}", flush=True)
        if len(switched) < len(current) or max(switched.values()) > SWITCH_BOUND_S:
            raise SystemExit(f"not every replica served {new_version} within {SWITCH_BOUND_S} s")
        if publish["old_version_answers_after_last_switch"]:
            raise SystemExit("the balancer still got answers from the old model after the swap")

        # 5. Kill one replica, restart another, replace the killed one; all under load.
        (kill_id, (killed, _)), (restart_id, (restarted, _)) = list(current.items())[:2]
        t_kill = time.time()
        run(["docker", "kill", kill_id], env)
        time.sleep(2)
        t0 = time.time()
        run(["docker", "restart", "--time", "30", restart_id], env)
        wait_healthy([restart_id], env)
        restart_s = round(time.time() - t0, 1)
        status = run(
            ["docker", "inspect", "--format", "{{.State.Status}}", kill_id], env, quiet=True
        )
        run(["docker", "rm", "--force", kill_id], env)  # compose would start it again, not anew
        t0 = time.time()
        run([*compose, "up", "-d", "--no-recreate", "--scale", f"api={args.replicas}"], env)
        wait_healthy(replicas.ids(), env)
        replace_s = round(time.time() - t0, 1)
        after = remember()
        replacement = [name for cid, (name, _) in after.items() if cid not in current]
        t_healthy = time.time()
        time.sleep(10)  # load on the recovered set
        recovered = summarize(load.between(t_healthy), names)
        kill = summarize(load.between(t_kill, t_healthy), names)
        kill.update(
            {
                "killed": killed,
                "killed_status_after_2s": status.strip(),  # `exited`: Docker did not restart it
                "restarted": restarted,
                "restart_to_healthy_s": restart_s,
                "replacement": replacement,
                "replacement_to_healthy_s": replace_s,
                "answering_after_recovery": recovered["per_replica"],
            }
        )
        summary["kill_restart"] = kill
        print(f"kill/restart: {kill}", flush=True)
        if len(recovered["per_replica"]) != args.replicas or not all(
            name in recovered["per_replica"] for name in [restarted, *replacement]
        ):
            raise SystemExit("the balancer does not reach the restarted and the new replica")

        # 5b. One more replica, at an address nginx has never seen (the others are all in use):
        # it gets traffic only if nginx resolves `api` again. Then back to N (a graceful stop).
        t0 = time.time()
        run([*compose, "up", "-d", "--no-recreate", "--scale", f"api={args.replicas + 1}"], env)
        wait_healthy(replicas.ids(), env)
        grown = remember()
        (added, added_addr) = next(v for cid, v in grown.items() if cid not in after)
        t_grown = time.time()
        time.sleep(10)
        on_added = summarize(load.between(t_grown), names)["per_replica"].get(added, 0)
        t1 = time.time()
        run([*compose, "up", "-d", "--no-recreate", "--scale", f"api={args.replicas}"], env)
        time.sleep(3)
        scale = summarize(load.between(t0), names)
        scale.update(
            {
                "added": [added, added_addr],
                "seen_before": added_addr in {a for _, a in {**current, **after}.values()},
                "requests_on_added_in_10s": on_added,
                "scale_in_s": round(time.time() - t1 - 3, 1),
            }
        )
        summary["scale_out_in"] = scale
        print(f"scale out and in: {scale}", flush=True)
        if not on_added:
            raise SystemExit("the balancer never sent a request to the added replica")
        after = remember()

        # 6. Slow clients: through the balancer, and a control group on one replica directly.
        addr = next(name_addr[1] for name_addr in replicas.running().values())
        hold = 4 * HEADER_TIMEOUT_S
        t0 = time.time()
        via_lb, direct = asyncio.run(
            slow_clients(
                [("127.0.0.1", args.port, args.slow_clients), (addr, 8000, args.slow_control)],
                interval=5.0,
                hold=hold,
            )
        )
        closed = sorted(c for c in via_lb if c is not None)
        during = summarize(load.between(t0, time.time()), names)
        slow = {
            "through_lb": len(via_lb),
            "closed_by_lb": len(closed),
            "closed_after_s": {
                "min": round(closed[0], 1) if closed else None,
                "p50": round(statistics.median(closed), 1) if closed else None,
                "max": round(closed[-1], 1) if closed else None,
            },
            "client_header_timeout_s": HEADER_TIMEOUT_S,
            "direct_to_one_replica": len(direct),
            "direct_still_open_after_s": [sum(c is None for c in direct), hold],
            "real_requests_during": during,
        }
        summary["slow_clients"] = slow
        print(f"slow clients: {slow}", flush=True)
        if len(closed) != len(via_lb) or closed[-1] > HEADER_TIMEOUT_S + 6:
            raise SystemExit("the balancer did not close every slow client after its timeout")

        # 7. Zero failed requests across all of it.
        records = load.stop()
        load = None
        total = summarize(records + spread_records, names)
        summary["all_requests"] = {k: total[k] for k in ("requests", "failed", "retried")}
        if total["failed"]:
            raise SystemExit(f"{total['failed']} requests failed: {total['failures']}")
    finally:
        if load is not None:
            load.stop()
        t0 = time.perf_counter()
        run([*compose, "--profile", "train", "down", "-v", "--remove-orphans"], env, check=False)
        summary["down_s"] = round(time.perf_counter() - t0, 1)
        summary["total_s"] = round(time.time() - t_start, 1)
        print(json.dumps(summary, indent=2))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    print(f"docker scale smoke: OK ({RESULTS.relative_to(ROOT)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
