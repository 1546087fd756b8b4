"""Load from ``wrk`` (a C load generator: it never is the bottleneck on a small machine, where a
Python client saturates near the server's rate and hides it), and the metrics the serving
benchmarks read back from our server.

* ``wrk_bodies(url, path, bodies, connections, seconds)``: one wrk run POSTing the JSON bodies in
  turn (a Lua script), parsed into requests/s, p50/p99 ms, errors.
* ``require_wrk(parser)``: exit with the install command where wrk is missing.
* ``fill_mask_bodies(n)``: /fill-mask bodies, a validation-set gloss with its middle word masked.
* ``histograms(metrics_text)`` and ``stage_table(before, after)``: Prometheus histograms from
  ``/metrics`` and, between two scrapes, each stage's request count, mean and bucket p50/p99.

Deliberately not here: starting servers (``bench.server.Server``), verifying answers.
Needs wrk (``sudo apt-get install -y wrk``).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import tempfile

from bench.common import DATA

LUA = """
local bodies = {
%s
}
local counter = 0
request = function()
  counter = counter %% #bodies + 1
  return wrk.format("POST", "%s", {["Content-Type"] = "application/json"}, bodies[counter])
end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRK_JSON {"requests": %%d, "duration_us": %%d, "errors": %%d, "p50_us": %%d, "p99_us": %%d}\\n',
    summary.requests, summary.duration, e.connect + e.read + e.write + e.status + e.timeout,
    latency:percentile(50), latency:percentile(99)))
end
"""


def require_wrk(parser: argparse.ArgumentParser) -> None:
    """Exit (status 2) saying how to install wrk, where it is not on PATH."""
    if shutil.which("wrk") is None:
        name = parser.prog.rsplit(".", 1)[-1]
        parser.exit(2, f"{name}: wrk is missing: sudo apt-get install -y wrk\n")


def wrk_bodies(
    url: str, path: str, bodies: list[dict], connections: int, seconds: float, threads: int = 2
) -> dict:
    """One wrk run POSTing the JSON ``bodies`` in turn: requests/s, p50/p99 in ms, errors."""
    lua_bodies = ",\n".join("[==[" + json.dumps(b) + "]==]" for b in bodies)
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        f.write(LUA % (lua_bodies, path))
        script = f.name
    try:
        threads = max(1, min(threads, connections))  # wrk needs a connection per thread
        cmd = ["wrk", "-t", str(threads), "-c", str(connections)]
        cmd += ["-d", f"{max(1, round(seconds))}s", "--timeout", "60s", "--latency"]
        cmd += ["-s", script, url]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    finally:
        os.unlink(script)
    line = next(x for x in out.splitlines() if x.startswith("WRK_JSON "))
    raw = json.loads(line.removeprefix("WRK_JSON "))
    return {
        "rps": round(raw["requests"] / (raw["duration_us"] / 1e6), 2),
        "p50_ms": round(raw["p50_us"] / 1000, 1),
        "p99_ms": round(raw["p99_us"] / 1000, 1),
        "requests": raw["requests"],
        "errors": raw["errors"],
    }


def fill_mask_bodies(n: int = 256) -> list[dict]:
    """Fill-mask bodies: a validation gloss (8-24 words) with its middle word masked, top_k 5."""
    out = []
    for line in (DATA / "wordnet.valid.txt").read_text(encoding="utf-8").splitlines():
        words = line.split()[:24]
        if len(words) < 8:
            continue
        words[len(words) // 2] = "[MASK]"
        out.append({"inputs": " ".join(words), "top_k": 5})
        if len(out) == n:
            break
    return out


_SAMPLE = re.compile(r"^(\w+)_(bucket|sum|count)(?:\{(.*)\})? (\S+)$")


def histograms(text: str) -> dict[tuple[str, str], dict]:
    """(histogram name, its label other than ``le`` as ``k=v``) -> buckets, sum and count."""
    out: dict[tuple[str, str], dict] = {}
    for line in text.splitlines():
        m = _SAMPLE.match(line)
        if not m:
            continue
        name, kind, labels, value = m.groups()
        pairs = dict(p.split("=", 1) for p in labels.split(",")) if labels else {}
        le = pairs.pop("le", None)
        key = (name, ",".join(f"{k}={v.strip(chr(34))}" for k, v in sorted(pairs.items())))
        entry = out.setdefault(key, {"buckets": [], "sum": 0.0, "count": 0.0})
        if kind == "bucket":
            entry["buckets"].append((float(le.strip('"')), float(value)))
        else:
            entry[kind] = float(value)
    return out


def _quantile(buckets: list[tuple[float, float]], q: float) -> float:
    """The upper bound of the bucket holding quantile ``q`` (Prometheus buckets are cumulative)."""
    total = buckets[-1][1] if buckets else 0.0
    for bound, count in buckets:
        if total and count >= q * total:
            return bound
    return float("nan")


def stage_table(before: str, after: str, names: tuple[str, ...]) -> dict[str, dict]:
    """Between two /metrics scrapes: per histogram series of ``names``, count, mean ms, p50/p99
    ms (bucket upper bounds, so "at most")."""
    a, b = histograms(before), histograms(after)
    out = {}
    for key, entry in b.items():
        if key[0] not in names:
            continue
        prev = a.get(key, {"buckets": [], "sum": 0.0, "count": 0.0})
        prev_buckets = dict(prev["buckets"])
        buckets = [(le, c - prev_buckets.get(le, 0.0)) for le, c in entry["buckets"]]
        count = entry["count"] - prev["count"]
        label = key[1].split("=", 1)[1] if key[1] else key[0]
        out[label] = {
            "count": int(count),
            "mean_ms": round((entry["sum"] - prev["sum"]) / count * 1000, 2) if count else None,
            "p50_ms_at_most": round(_quantile(buckets, 0.5) * 1000, 2),
            "p99_ms_at_most": round(_quantile(buckets, 0.99) * 1000, 2),
        }
    return out
