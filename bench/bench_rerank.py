"""Reranking: TF-IDF, the default bi-encoder alone, and its top 20 reranked by the cross-encoder,
plus what a rerank costs through the real server.

    python -m bench.bench_rerank [--quick] [--threads N] [--reranker DIR] [--retriever DIR]
                                 [--top-k 20]

Task: the retrieval benchmark's (bench_retrieval): every usage example of data/wordnet.valid.txt
must find its own definition among the 1,330 definitions (headwords removed) of the valid glosses
with examples; recall@1, recall@10 and MRR with ties at their expected value.

* TF-IDF: lowercase word counts x smooth idf, cosine (`training.evaluation.retrieval`).
* bi-encoder: the retriever checkpoint's embeddings (its pooling, as the server embeds), cosine.
* reranked: the bi-encoder's top-k per query re-ordered by the reranker's logits, the rest after
  them in the bi-encoder's order (`training.evaluation.rerank.reranked_scores`), computed in this
  process (`bert-eval --task rerank`'s figures).
* Latency: the reranker served by bert-serve (bench/server.py; its default precision unless
  --precision, the one it reports; one torch thread), one POST /rerank per query with its top-k definitions, sent one
  after another from this process after a warm-up; p50 and p99 of the wall-clock time of each
  request over the queries. The same requests' scores rank the candidates again: the served
  figures, which must equal the in-process ones (up to the served precision).

Results: a markdown table and ratios on stdout, bench/results/bench_rerank.json. `--quick`: the
first 200 queries for the latency (the quality figures stay whole). Caveat: this repository's
build machine is shared, so latency figures move with the other jobs on it (p99 most); the CPU
record says what it ran on. Deliberately not measured: concurrent load (bench_serve measures the
server under load), rerank depths other than --top-k, GPUs.
"""

from __future__ import annotations

import logging
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

from bench.common import (
    DEFAULT_CHECKPOINT,
    RESULTS,
    RETRIEVAL_FILE,
    ROOT,
    bench_parser,
    cpu_report,
    ratio,
    setup_logging,
    table_lines,
    write_results,
)
from bench.server import Server
from training.data.pairs import retrieval_set
from training.data.rerank import PairTokens
from training.evaluation.rerank import (
    METRICS,
    cross_scores,
    embedding_scores,
    evaluate_checkpoint_rerank,
    load_reranker,
    nearest,
    reranked_scores,
)
from training.evaluation.retrieval import CheckpointEmbedder, retrieval_metrics

log = logging.getLogger(__name__)
RERANKER = ROOT / "checkpoints" / "reranker"
WARMUP = 10  # requests before timing: the first ones pay for lazy set-up
QUICK_QUERIES = 200


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0-100) by linear interpolation, numpy's default."""
    s = sorted(values)
    pos = (len(s) - 1) * q / 100
    lo = int(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def serve_and_time(
    reranker: Path,
    queries: list[str],
    documents: list[list[str]],
    threads: int,
    precision: str | None = None,
) -> dict[str, Any]:
    """Each query with its documents through the served reranker's POST /rerank, one at a time:
    per-request milliseconds and each query's scores (in document order)."""
    import httpx

    argv = ["app.cli", "--checkpoint", str(reranker), "--torch-threads", str(threads)]
    argv += ["--max-client-batch", str(max(32, len(documents[0])))]
    if precision is not None:
        argv += ["--precision", precision]
    server = Server("ours", argv, log=RESULTS / "bench_rerank_server.log")
    with server, httpx.Client(base_url=server.url, timeout=60) as client:
        info = client.get("/info").json()["model"]
        for q, docs in list(zip(queries, documents, strict=True))[:WARMUP]:
            client.post("/rerank", json={"query": q, "texts": docs}).raise_for_status()
        ms, scores = [], []
        for q, docs in zip(queries, documents, strict=True):
            t0 = time.perf_counter()
            r = client.post("/rerank", json={"query": q, "texts": docs, "raw_scores": True})
            ms.append((time.perf_counter() - t0) * 1000)
            r.raise_for_status()
            by_index = {x["index"]: x["score"] for x in r.json()}
            scores.append([by_index[i] for i in range(len(docs))])
    return {
        "ms": ms,
        "scores": scores,
        "precision": info["precision"]["effective"],
        "server_threads": threads,
    }


def markdown(report: dict[str, Any]) -> str:
    """The three systems side by side with ratios; latency and the served check below."""
    rows = []
    for name, label in (
        ("tfidf", "TF-IDF"),
        ("retriever", "bi-encoder alone (checkpoints/default)"),
        ("reranked", f"bi-encoder top-{report['top_k']} + reranker"),
    ):
        m = report[name]
        rows.append(
            [
                label,
                *(f"{m[k]:.4f}" for k in METRICS),
                ratio(m["recall@1"] / report["retriever"]["recall@1"]),
                ratio(m["recall@1"] / report["tfidf"]["recall@1"]),
            ]
        )
    header = ["system", "recall@1", "recall@10", "MRR", "recall@1 / bi-encoder", "/ TF-IDF"]
    lat = report["latency"]
    lines = [
        f"Retrieval on {report['queries']:,} valid examples -> their definition among "
        f"{report['candidates']:,} ({report['corpus']}); ties at their expected value.",
        "",
        *table_lines(header, rows, "lrrrrr"),
        "",
        f"- reranked vs bi-encoder: recall@1 {ratio(report['ratios']['recall@1'])} "
        f"({report['reranked']['recall@1'] - report['retriever']['recall@1']:+.4f}), "
        f"recall@10 {ratio(report['ratios']['recall@10'])}, MRR {ratio(report['ratios']['mrr'])}; "
        f"the bi-encoder's top {report['top_k']} hold the answer for "
        f"{report['first_stage_recall']:.1%} of the queries (the reranker's ceiling at recall@1)",
        f"- POST /rerank, {report['top_k']} documents, {lat['requests']} queries one at a time: "
        f"p50 {lat['p50_ms']:.1f} ms, p99 {lat['p99_ms']:.1f} ms, mean {lat['mean_ms']:.1f} ms "
        f"({lat['precision']}, {lat['server_threads']} torch thread; CPU {report['cpu']['model']}, "
        f"flags {report['cpu']['flags']}; a shared machine: latency is noisy)",
    ]
    served = report.get("served")
    if served:
        lines.append(
            f"- served scores rank as in-process ones: recall@1 {served['recall@1']:.4f} "
            f"(in-process {served['in_process_recall@1']:.4f}), max |logit difference| "
            f"{served['max_abs_logit_diff']:.2e}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = bench_parser(
        "bench_rerank",
        __doc__,
        quick=f"time the first {QUICK_QUERIES} queries only",
        threads=1,
    )
    parser.add_argument("--reranker", type=Path, default=RERANKER)
    parser.add_argument("--retriever", type=Path, default=DEFAULT_CHECKPOINT)
    parser.add_argument("--top-k", type=int, default=20)
    parser.add_argument(
        "--precision",
        choices=("auto", "fp32", "bf16", "int8"),
        default=None,
        help="the server's precision (default: its own default, auto)",
    )
    args = parser.parse_args(argv)
    setup_logging()
    if args.threads:
        torch.set_num_threads(args.threads)

    t_start = time.perf_counter()
    figures = evaluate_checkpoint_rerank(
        args.reranker, [str(RETRIEVAL_FILE)], retriever=args.retriever, top_k=args.top_k
    )
    log.info("in-process figures: %s", {k: figures[k] for k in ("retriever", "reranked")})
    rset = retrieval_set([RETRIEVAL_FILE])
    first = embedding_scores(CheckpointEmbedder.load(args.retriever), rset)  # (Q, C)
    top = nearest(first, args.top_k)  # (Q, k): the documents each /rerank request carries
    n = QUICK_QUERIES if args.quick else len(rset.queries)
    documents = [[rset.candidates[c] for c in row] for row in top[:n].tolist()]
    timed = serve_and_time(
        args.reranker, rset.queries[:n], documents, max(args.threads, 1), args.precision
    )
    ms = timed["ms"]
    served_logits = torch.tensor(timed["scores"])  # (n, k)

    model, tokenizer, max_length = load_reranker(args.reranker)
    local = cross_scores(model, PairTokens.build(rset, tokenizer), top[:n], max_length=max_length)
    targets = rset.targets[:n]
    served = retrieval_metrics(reranked_scores(first[:n], top[:n], served_logits), targets)
    in_process = retrieval_metrics(reranked_scores(first[:n], top[:n], local), targets)
    cpu = cpu_report()
    report: dict[str, Any] = {
        "benchmark": "bench_rerank",
        "quick": args.quick,
        "threads": args.threads,
        "torch": torch.__version__,
        "corpus": str(RETRIEVAL_FILE.relative_to(ROOT)),
        "reranker": str(args.reranker),
        "retriever": str(args.retriever),
        "top_k": figures["top_k"],
        "queries": figures["queries"],
        "candidates": figures["candidates"],
        **{name: figures[name] for name in ("tfidf", "retriever", "reranked")},
        "first_stage_recall": figures["first_stage_recall"],
        "ratios": figures["ratio_to_retriever"],
        "ratios_to_tfidf": figures["ratio_to_tfidf"],
        "latency": {
            "requests": len(ms),
            "documents": args.top_k,
            "p50_ms": percentile(ms, 50),
            "p99_ms": percentile(ms, 99),
            "mean_ms": statistics.mean(ms),
            "precision": timed["precision"],
            "server_threads": timed["server_threads"],
        },
        "served": {
            "queries": n,
            "recall@1": served["recall@1"],
            "mrr": served["mrr"],
            "in_process_recall@1": in_process["recall@1"],
            "max_abs_logit_diff": float((served_logits - local).abs().max()),
        },
        "cpu": {"model": cpu.model, "flags": cpu.summary, "cpus": cpu.cpus},
    }
    report["wall_s"] = time.perf_counter() - t_start
    print(markdown(report))
    write_results(args.out, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
