"""Embedding serving: our /v1/embeddings against infinity-emb on the same sentence-transformers
directory, at 32 concurrent connections, loaded by wrk.

    python -m bench.bench_embed [--quick] [--duration S] [--shapes minilm,base]
                                [--connections 32] [--threads N]

For each model shape, a sentence-transformers directory with random weights (mean pooling and a
Normalize module, BERT's 30,522-token vocabulary, max_seq_length 256), written once into
bench/results/bench_embed_<shape>/ in the layout hub snapshots have (sentence_transformers.models
module names, the Pooling flags, sentence_bert_config.json), which both servers read unchanged:
  minilm  L6 H384 A12 I1536 (all-MiniLM-L6-v2's shape)
  base    L12 H768 A12 I3072 (BERT-base)
two servers run one at a time, each a subprocess on a free loopback port with the same number
of torch threads (``--threads``, default: cores - 1, leaving a core to wrk):
  ours      bert-serve --checkpoint DIR                                   POST /v1/embeddings
  infinity  infinity_emb v2 --model-id DIR --engine torch --device cpu    POST /embeddings
            (HF_HUB_OFFLINE=1: nothing is downloaded)
Each is first checked (the same 16 texts through both: cosine of our vector with infinity's,
the minimum is reported), warmed up for a few seconds, then loaded by ``wrk -c 32 --latency``
with a Lua script that POSTs OpenAI-style bodies of one validation-set text each (a different
text per request, cycling through 512). Reported per server: requests/s, p50 and p99 latency,
errors; and the ratios ours / infinity for throughput and p99. Results: a table on stdout and
bench/results/bench_embed.json. ``--quick``: the MiniLM shape only, 10 s of load.

Setup, once:
  wrk (Debian):      sudo apt-get install -y wrk
  infinity-emb lives in its own venv, .venv-infinity/ (gitignored), so that its dependency pins
  (transformers 4, sentence-transformers 3) never touch .venv; torch is pinned to the CPU wheel
  so that pip never pulls a multi-GB CUDA build:
      python3.11 -m venv .venv-infinity
      .venv-infinity/bin/pip install --constraint <(echo torch==2.13.0) \\
          "torch==2.13.0" "infinity-emb[server,torch]==0.0.78"
  The bench runs exactly these commands on first use when .venv-infinity is missing
  (``--no-install`` refuses instead).

Caveats: wrk shares the machine's cores with the server under test; on a shared machine the
absolute numbers move, the ratios inside one run are what counts. Deliberately not measured:
GPUs, ONNX/ctranslate2 engines, batches of many texts per request.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import (
    DATA,
    RESULTS,
    ROOT,
    TRAIN_FILES,
    bench_parser,
    cpu_report,
    setup_logging,
    table_lines,
    write_results,
)
from bench.server import Server
from bench.wrk import require_wrk, wrk_bodies

log = logging.getLogger(__name__)
INFINITY_VENV = ROOT / ".venv-infinity"
INFINITY_BIN = INFINITY_VENV / "bin" / "infinity_emb"
INFINITY_SPEC = "infinity-emb[server,torch]==0.0.78"
TORCH_SPEC = "torch==2.13.0"
SHAPES = {
    "minilm": {
        "num_hidden_layers": 6,
        "hidden_size": 384,
        "num_attention_heads": 12,
        "intermediate_size": 1536,
    },
    "base": {
        "num_hidden_layers": 12,
        "hidden_size": 768,
        "num_attention_heads": 12,
        "intermediate_size": 3072,
    },
}
VOCAB_SIZE = 30522  # BERT's (bert-base-uncased, all-MiniLM-L6-v2)
MAX_SEQ_LENGTH = 256
SERVED_NAME = "bench"
N_TEXTS = 512
N_CHECK = 16


# --- the model directory ------------------------------------------------------------------------


def vocabulary(size: int = VOCAB_SIZE, learned: int = 16000) -> list[str]:
    """A WordPiece vocabulary learned from the bundled corpus, padded to ``size`` with BERT's
    ``[unusedN]`` tokens (speed depends on the table's size and the pieces per text)."""
    from tokenization import WordPieceTokenizer

    with tempfile.TemporaryDirectory() as d:
        corpus = Path(d) / "corpus.txt"
        lines = []
        for path in TRAIN_FILES:
            with path.open(encoding="utf-8") as f:
                lines += [line for _, line in zip(range(20000), f, strict=False)]
        corpus.write_text("".join(lines), encoding="utf-8")
        tokens = list(WordPieceTokenizer.train([corpus], vocab_size=learned).vocab)
    return tokens + [f"[unused{i}]" for i in range(size - len(tokens))]


def build_model(shape: str, directory: Path) -> Path:
    """A random ``shape`` BERT as a sentence-transformers directory (cached in ``directory``)."""
    import torch
    import transformers

    from tokenization import WordPieceTokenizer

    spec = {"shape": SHAPES[shape], "vocab": VOCAB_SIZE, "max_seq_length": MAX_SEQ_LENGTH}
    marker = directory / "bench_embed.json"
    if marker.is_file() and json.loads(marker.read_text()) == spec:
        return directory
    if directory.exists():
        shutil.rmtree(directory)
    directory.mkdir(parents=True)
    t0 = time.perf_counter()
    WordPieceTokenizer(vocabulary(), model_max_length=MAX_SEQ_LENGTH).save_pretrained(directory)
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=VOCAB_SIZE, **SHAPES[shape])
    transformers.BertModel(config).eval().save_pretrained(directory)
    modules = [
        ("Transformer", ""),
        ("Pooling", "1_Pooling"),
        ("Normalize", "2_Normalize"),
    ]
    (directory / "modules.json").write_text(
        json.dumps(
            [
                {
                    "idx": i,
                    "name": str(i),
                    "path": path,
                    "type": f"sentence_transformers.models.{k}",
                }
                for i, (k, path) in enumerate(modules)
            ],
            indent=2,
        )
    )
    (directory / "1_Pooling").mkdir()
    flags = ("cls_token", "mean_tokens", "max_tokens", "mean_sqrt_len_tokens")
    pooling = {f"pooling_mode_{f}": f == "mean_tokens" for f in flags}
    hidden = SHAPES[shape]["hidden_size"]
    (directory / "1_Pooling" / "config.json").write_text(
        json.dumps({"word_embedding_dimension": hidden, **pooling}, indent=2)
    )
    (directory / "2_Normalize").mkdir()
    (directory / "sentence_bert_config.json").write_text(
        json.dumps({"max_seq_length": MAX_SEQ_LENGTH, "do_lower_case": False})
    )
    marker.write_text(json.dumps(spec))
    log.info("built %s in %.1fs", directory, time.perf_counter() - t0)
    return directory


def texts(n: int = N_TEXTS) -> list[str]:
    """Validation-set glosses (8-40 words): one per request."""
    lines = (DATA / "wordnet.valid.txt").read_text(encoding="utf-8").splitlines()
    out = [" ".join(line.split()[:40]) for line in lines if len(line.split()) >= 8]
    return out[:n]


# --- servers and load ---------------------------------------------------------------------------


def ensure_infinity(install: bool) -> None:
    """Create .venv-infinity with infinity-emb (CPU torch) unless it is there."""
    if INFINITY_BIN.is_file():
        return
    if not install:
        raise SystemExit(f"bench_embed: {INFINITY_BIN} is missing; see this module's docstring")
    constraint = RESULTS / "torch-constraint.txt"
    RESULTS.mkdir(parents=True, exist_ok=True)
    constraint.write_text(TORCH_SPEC + "\n")
    pip = [
        str(INFINITY_VENV / "bin" / "pip"),
        "install",
        "--quiet",
        "--constraint",
        str(constraint),
    ]
    for cmd in (
        [sys.executable, "-m", "venv", str(INFINITY_VENV)],
        [*pip, TORCH_SPEC, INFINITY_SPEC],
    ):
        log.info("bench_embed: %s", " ".join(cmd))
        subprocess.run(cmd, check=True)


def servers(directory: Path, threads: int) -> dict[str, tuple[Server, str]]:
    """(server, embeddings path) for ours and infinity, not started."""
    ours_args = ["app.cli", "--checkpoint", str(directory), "--torch-threads", str(threads)]
    ours_args += ["--log-level", "warning", "--max-input-tokens", str(MAX_SEQ_LENGTH)]
    ours = Server(
        "embed-ours",
        ours_args,
        log=RESULTS / "bench_embed_ours.log",
    )
    infinity_args = ["v2", "--model-id", str(directory), "--served-model-name", SERVED_NAME]
    infinity_args += ["--engine", "torch", "--device", "cpu", "--log-level", "warning"]
    infinity = Server(
        "embed-infinity",
        infinity_args,
        command=[str(INFINITY_BIN)],
        env={
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
            "OMP_NUM_THREADS": str(threads),
            "MKL_NUM_THREADS": str(threads),
            "INFINITY_ANONYMOUS_USAGE_STATS": "0",
            "DO_NOT_TRACK": "1",
        },
        log=RESULTS / "bench_embed_infinity.log",
    )
    return {"ours": (ours, "/v1/embeddings"), "infinity": (infinity, "/embeddings")}


def embed(url: str, path: str, inputs: list[str]) -> list[list[float]]:
    import httpx

    r = httpx.post(f"{url}{path}", json={"input": inputs, "model": SERVED_NAME}, timeout=120)
    r.raise_for_status()
    data = sorted(r.json()["data"], key=lambda d: d["index"])
    return [d["embedding"] for d in data]


def wrk(url: str, path: str, inputs: list[str], connections: int, seconds: float) -> dict:
    """One wrk run of OpenAI-style embedding bodies: requests/s, p50/p99 in ms, errors."""
    bodies = [{"input": t, "model": SERVED_NAME} for t in inputs]
    return wrk_bodies(url, path, bodies, connections, seconds)


def cosine(a: list[float], b: list[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    return dot / ((sum(x * x for x in a) * sum(y * y for y in b)) ** 0.5)


# --- the run ------------------------------------------------------------------------------------


def run_shape(shape: str, args: argparse.Namespace, inputs: list[str]) -> dict:
    directory = build_model(shape, RESULTS / f"bench_embed_{shape}")
    check = inputs[:N_CHECK]
    measured: dict[str, dict] = {}
    vectors: dict[str, list[list[float]]] = {}
    for name, (server, path) in servers(directory, args.threads).items():
        t0 = time.perf_counter()
        with server:
            startup = time.perf_counter() - t0
            vectors[name] = embed(server.url, path, check)
            wrk(server.url, path, inputs, args.connections, args.warmup)
            measured[name] = {**wrk(server.url, path, inputs, args.connections, args.duration)}
            measured[name]["startup_s"] = round(startup, 1)
        log.info("%-6s %-8s %s", shape, name, json.dumps(measured[name]))
    cosines = [cosine(a, b) for a, b in zip(vectors["ours"], vectors["infinity"], strict=True)]
    ours, theirs = measured["ours"], measured["infinity"]
    for name, m in measured.items():
        if not m["requests"]:
            log.warning(
                "bench_embed: %s completed no request in %gs (latency above the duration on "
                "this machine): no ratio; run longer",
                name,
                args.duration,
            )
    both = ours["requests"] and theirs["requests"]
    return {
        "shape": SHAPES[shape],
        "servers": measured,
        "throughput_ratio": round(ours["rps"] / theirs["rps"], 3) if both else None,
        "p99_ratio": round(ours["p99_ms"] / theirs["p99_ms"], 3) if both else None,
        "min_cosine": round(min(cosines), 7),
    }


def ratio(value: float | None) -> str:
    """A ratio as rounded in the results (3 digits, no padding): ``1.25x``, or n/a."""
    return "n/a" if value is None else f"{value}x"


def markdown(results: dict[str, dict], connections: int) -> str:
    """Both servers side by side per shape, with the ratios ours / infinity."""
    header = ["shape", "ours req/s (p50 / p99 ms)", "infinity req/s (p50 / p99 ms)"]
    header += ["throughput ours / infinity", "p99 ours / infinity", "min cosine", "errors"]
    rows = []
    for shape, r in results.items():
        o, i = r["servers"]["ours"], r["servers"]["infinity"]
        rows.append(
            [
                shape,
                f"{o['rps']} ({o['p50_ms']} / {o['p99_ms']})",
                f"{i['rps']} ({i['p50_ms']} / {i['p99_ms']})",
                f"**{ratio(r['throughput_ratio'])}**",
                ratio(r["p99_ratio"]),
                r["min_cosine"],
                o["errors"] + i["errors"],
            ]
        )
    lines = table_lines(header, rows, "lllrrrr")
    return "\n".join(lines) + f"\n\n(wrk, {connections} connections, one text per request)"


def main(argv: list[str] | None = None) -> int:
    parser = bench_parser("bench_embed", __doc__, quick="MiniLM shape only, 10 s of load")
    parser.add_argument("--duration", type=float, help="seconds of measured load per server")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds of warm-up load")
    parser.add_argument("--shapes", help=f"comma-separated, of {', '.join(SHAPES)}")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument(
        "--threads",
        type=int,
        default=max(1, (os.cpu_count() or 2) - 1),
        help="torch threads of each server (default: cores - 1, leaving one to wrk)",
    )
    parser.add_argument("--no-install", action="store_true", help="never create .venv-infinity")
    args = parser.parse_args(argv)
    shapes = (args.shapes or ("minilm" if args.quick else ",".join(SHAPES))).split(",")
    unknown = [s for s in shapes if s not in SHAPES]
    if unknown:
        parser.error(f"unknown shape(s) {unknown}; choose from {list(SHAPES)}")
    if args.duration is None:
        args.duration = 10.0 if args.quick else 30.0
    require_wrk(parser)
    setup_logging()
    ensure_infinity(install=not args.no_install)
    inputs = texts()
    results = {shape: run_shape(shape, args, inputs) for shape in shapes}
    print(markdown(results, args.connections))
    for shape, r in results.items():
        print(
            f"{shape}: throughput ours / infinity {ratio(r['throughput_ratio'])}, "
            f"p99 ours / infinity {ratio(r['p99_ratio'])}, min cosine {r['min_cosine']}"
        )
    cpu = cpu_report()
    report = {
        "machine": {"cpus": cpu.cpus, "platform": cpu.platform},
        "settings": {
            "connections": args.connections,
            "threads": args.threads,
            "duration_s": args.duration,
            "quick": args.quick,
        },
        "results": results,
    }
    write_results(args.out, report)
    failed = sum(r["servers"][s]["errors"] for r in results.values() for s in r["servers"])
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
