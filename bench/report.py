"""docs/benchmarks.md, rendered from the committed results: `python -m bench.report`.

    python -m bench.report            # rewrite docs/benchmarks.md from bench/results/*.json
    python -m bench.report --check    # exit 1 when the page and the results disagree

One section per results file (``bench/results/<name>.json``), in ``bench.run_all``'s order, then
the studies run by hand (the recipe sweep, the int8 levers and error analysis) and the
reliability suite's figures: the command that produced it (rebuilt from the settings the file
records), the machine it ran on (CPU flags, threads, versions, as recorded) and its tables, built
with ``bench.common.table_lines``. bench_precision and study_int8 print their tables with this
module's ``precision_tables``, ``study_tables`` and ``diagnosis_tables``: one rendering, on the
terminal and on the page. A benchmark of ``run_all`` without a results file is listed as such, so
the page says what it does not show. A results file this module has no renderer for is an error:
a new benchmark adds its section here, and the test (tests/bench/test_report.py) fails until the
committed page is rendered again.

Deliberately not here: running benchmarks (each writes its own file), targets and verdicts that
a results file does not record (the prose in docs/ says what a figure was for), and any figure
typed by hand: everything on the page comes from the JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from bench.common import RESULTS, ROOT, ratio, table_lines
from bench.encoders import ENCODER_SHAPES
from bench.run_all import BENCHES

PAGE = ROOT / "docs" / "benchmarks.md"

Result = Mapping[str, Any]


# --- formatting ---------------------------------------------------------------------------------


def pct(x: float | None, digits: int = 1) -> str:
    """``pct(0.3054)`` -> ``"30.5%"``; ``"-"`` for None."""
    return "-" if x is None else f"{100 * x:.{digits}f}%"


def num(x: float | None, digits: int = 0) -> str:
    """``num(12345.6)`` -> ``"12,346"``; ``num(0.30542, 3)`` -> ``"0.305"``; ``"-"`` for None."""
    return "-" if x is None else f"{x:,.{digits}f}"


def arg(x: float) -> str:
    """A recorded setting as it was typed: ``arg(6.0)`` -> ``"6"``, ``arg(0.5)`` -> ``"0.5"``."""
    return f"{x:g}"


def flags(value: Any) -> str:
    """CPU flags however a file records them: ``"avx2"``, ``["avx2"]`` or ``{"avx2": True}``."""
    if isinstance(value, Mapping):
        value = [f for f, there in value.items() if there]
    if isinstance(value, list | tuple):
        value = " ".join(value)
    return f"`{value}`" if value else "none recorded"


def retrieval_cells(m: Mapping[str, float]) -> list[str]:
    """A retrieval result's recall@1, recall@10 and MRR as table cells."""
    return [num(m[k], 4) for k in ("recall@1", "recall@10", "mrr")]


def header(title: str, command: str, machine: list[str]) -> list[str]:
    """A section's title, its command and the machine line."""
    return [f"## {title}", "", f"`{command}`", "", "Measured on: " + "; ".join(machine) + ".", ""]


# --- one renderer per results file --------------------------------------------------------------


def model_section(r: Result) -> list[str]:
    """bench_model: fill-mask forward against transformers, the served precisions, GFLOP/s."""
    eff = r.get("efficiency") or {}
    cpu = eff.get("cpu") or {}
    shapes = [row["shape"] for row in r["results"]]
    machine = [
        f"CPU flags {flags(cpu.get('flags'))} (torch kernels {cpu.get('torch_capability', '?')})",
        f"{r['threads']} threads",
        f"torch {r['torch']}, transformers {r['transformers']}",
    ]
    cmd = f"python -m bench.bench_model --shapes {','.join(shapes)} --threads {r['threads']}"
    out = header("Model: the fill-mask forward pass (`bench_model`)", cmd, machine)
    rows = [
        [
            f"{row['shape']} (L{row['layers']} H{row['hidden']}, {row['vocab']:,} vocab)",
            f"{num(row['ours_seq_per_s'], 1)} vs {num(row['hf_seq_per_s'], 1)}",
            ratio(row["throughput_ratio"]),
            f"{num(row['ours_latency_ms_median'], 1)} vs {num(row['hf_latency_ms_median'], 1)}",
            ratio(row["latency_ratio"]),
            f"{row['top5_identical']}/{row['top5_rows']}",
        ]
        for row in r["results"]
    ]
    head = ["shape", "seq/s ours vs HF", "throughput", "latency ms ours vs HF", "latency"]
    out += [
        f"Batches of {r['results'][0]['batch_size']} texts against "
        "`transformers.BertForMaskedLM` (same weights, same padded batches); latency is the "
        "median single request; ratios are ours / HF.",
        "",
        *table_lines([*head, "top-5 identical"], rows, "llrlrr"),
        "",
    ]
    rows = []
    for row in r["results"]:
        for precision, p in (row.get("precisions") or {}).items():
            gate = p["gate"]
            verdict = "passed" if gate["passed"] else "failed: serves fp32"
            rows.append(
                [
                    row["shape"],
                    precision,
                    f"{gate['min_cosine']:.4f} / {gate['top5_overlap']:.3f}: {verdict}",
                    ratio(p.get("throughput_ratio")),
                    ratio(p.get("latency_ratio")),
                ]
            )
    if rows:
        out += [
            "Each reduced precision as the server loads it (converted, then gated against fp32 "
            "on the probe set); ratios against HF in fp32:",
            "",
            *table_lines(
                ["shape", "precision", "gate: min cosine / top-5 overlap", "throughput", "latency"],
                rows,
                "lllrr",
            ),
            "",
        ]
    if eff:
        peak = eff["peak"]["fp32"]
        m, k, n = peak["best_gemm"]
        rows = [
            [f["shape"], f["precision"], num(f["gflops"], 1), pct(f["fraction_of_peak"], 0)]
            for f in eff["forward"]
        ]
        out += [
            f"Encoder forward (`model.encode`, batch {eff['batch']} x {eff['seq_len']}, no "
            f"padding; {eff['flops_counted']}) against the measured fp32 `torch.mm` peak, "
            f"{num(peak['gflops'], 1)} GFLOP/s at {m} x {k} x {n}:",
            "",
            *table_lines(["shape", "precision", "GFLOP/s", "of the peak"], rows, "llrr"),
            "",
        ]
    return out


def serve_section(r: Result) -> list[str]:
    """bench_serve: /fill-mask under wrk against a plain transformers server."""
    machine = [
        f"CPU flags {flags(r['cpu_flags'])}",
        f"{r['cpu_count']} CPUs, {r['torch_threads']} torch thread per server",
        f"Python {r['python']}, {r['platform']}",
    ]
    cmd = f"python -m bench.bench_serve --duration {arg(r['duration_s'])}"
    out = header("Serving: `/fill-mask` under load (`bench_serve`)", cmd, machine)
    names = list(r["results"])
    levels = [
        [
            rows[0]["connections"],
            *(f"{num(x['rps'])} ({x['p50_ms']:g} / {x['p99_ms']:g})" for x in rows),
        ]
        for rows in zip(*(r["results"][n] for n in names), strict=True)
    ]
    out += [
        f"`wrk` on loopback, {arg(r['duration_s'])} s per level; `hf` is a plain FastAPI + "
        '`transformers` `pipeline("fill-mask")` server, `ours-off` ours with batching off.',
        "",
        *table_lines(
            ["connections", *(f"{n} req/s (p50 / p99 ms)" for n in names)],
            levels,
            "r" + "l" * len(names),
        ),
        "",
    ]
    top = max(x["connections"] for x in r["results"]["ours"])
    rows = [[k, ratio(v)] for k, v in r["ratios"].items()]
    out += [*table_lines([f"at {top} connections", "ratio"], rows, "lr"), ""]
    stages = next(x.get("stages") for x in r["results"]["ours"] if x["connections"] == top)
    if stages:
        rows = [
            [s, v["mean_ms"], v["p50_ms_at_most"], v["p99_ms_at_most"]] for s, v in stages.items()
        ]
        out += [
            *table_lines(
                [f"ours at {top} connections: stage", "mean ms", "p50 ms (at most)", "p99 ms"],
                rows,
                "lrrr",
            ),
            "",
        ]
    return out


def cloze_section(r: Result) -> list[str]:
    """bench_cloze: whole-word cloze, checkpoints against count-based baselines."""
    named = {
        n: s["checkpoint"] for n, s in r["systems"].items() if "," not in n and "checkpoint" in s
    }
    cmd = "python -m bench.bench_cloze" + "".join(
        f" --checkpoint {n}={p}" for n, p in named.items()
    )
    machine = [f"CPU flags {flags(r['cpu_flags'])}", f"torch {r['torch']}"]
    out = header("Fill-mask quality: the whole-word cloze (`bench_cloze`)", cmd, machine)
    corpora = list(next(iter(r["systems"].values()))["by_corpus"])
    rows = [
        [
            name,
            num(s["top1"], 3),
            num(s["top5"], 3),
            ratio(s["top1_ratio"]),
            ratio(s["top5_ratio"]),
            *(num(s["by_corpus"][c]["top1"], 3) for c in corpora),
            pct(s.get("mlm_accuracy"), 2),
        ]
        for name, s in r["systems"].items()
    ]
    head = ["system", "top-1", "top-5", "top-1 / n-gram", "top-5 / n-gram"]
    head += [f"top-1 {c}" for c in corpora] + ["MLM accuracy"]
    acc = r.get("acceptance") or {}
    out += [
        f"{r['items']:,} items (at most {r['max_items_per_file']:,} per valid file, seed "
        f"{r['seed']}); the baselines rank only the {r['candidates']:,} candidate words, and "
        '"candidates only" gives a checkpoint that same choice. Ratios are over the n-gram\'s.',
        "",
        *table_lines(head, rows, "l" + "r" * (len(head) - 1)),
        "",
    ]
    if acc:
        verdict = "met" if acc["passed"] else "not met"
        out += [
            f"Acceptance (top-1 at least the n-gram's, top-5 above it) for `{acc['checkpoint']}`: "
            f"**{verdict}**.",
            "",
        ]
    return out


def finetune_section(r: Result) -> list[str]:
    """bench_finetune: supersense fine-tuning against TF-IDF, transformers' Trainer, random init."""
    cmd = f"python -m bench.bench_finetune --budget-min {arg(r['budget_min'])}"
    machine = [f"CPU flags {flags(r['cpu_flags'])}", f"{r['threads']} threads"]
    out = header("Fine-tuning a classifier (`bench_finetune`)", cmd, machine)
    labels = {
        "tfidf_logreg": "TF-IDF + logistic regression",
        "transformers_trainer": "transformers `Trainer`, same checkpoint and recipe",
        "ours": "ours (`bert-finetune`) from the checkpoint",
        "ours_random_init": "ours from a random initialisation",
    }
    s = r["systems"]
    rows = [
        [
            labels.get(name, name),
            num(x["accuracy"], 4),
            num(x["macro_f1"], 4),
            num(x.get("steps")),
            num(x.get("examples_per_s")),
            num(x.get("train_s")),
        ]
        for name, x in s.items()
    ]
    head = ["system", "accuracy", "macro-F1", "steps", "training examples/s", "seconds"]
    out += [
        f"WordNet supersenses (45 labels), valid split; {arg(r['budget_min'])} minutes of wall "
        "clock per fine-tune, evaluations included.",
        "",
        *table_lines(head, rows, "lrrrrr"),
        "",
    ]
    rows = [
        [
            f"ours vs {labels.get(name, name)}",
            f"{100 * (s['ours']['accuracy'] - s[name]['accuracy']):+.1f}",
            f"{100 * (s['ours']['macro_f1'] - s[name]['macro_f1']):+.1f}",
            ratio(s["ours"]["examples_per_s"] / s[name]["examples_per_s"])
            if s[name].get("examples_per_s")
            else "-",
        ]
        for name in s
        if name != "ours" and "ours" in s
    ]
    head = ["comparison", "accuracy (points)", "macro-F1 (points)", "training throughput"]
    out += [*table_lines(head, rows, "lrrr"), ""]
    return out


def sop_section(r: Result) -> list[str]:
    """bench_sop: continued pretraining with and without sentence-order prediction."""
    cmd = (
        f"python -m bench.bench_sop --pretrain-min {arg(r['pretrain_min'])} "
        f"--finetune-min {arg(r['finetune_min'])} --sop-weight {arg(r['sop_weight'])}"
    )
    out = header(
        "Sentence-order prediction (`bench_sop`)", cmd, [f"CPU flags {flags(r['cpu_flags'])}"]
    )
    rows = [
        [
            name,
            num(a["finetune_accuracy"], 4),
            num(a["finetune_macro_f1"], 4),
            num(a["retrieval_recall_at_1"], 4),
            num(a["retrieval_mrr"], 4),
            num(a["sop_accuracy"], 3),
        ]
        for name, a in r["arms"].items()
    ]
    head = ["arm", "supersense accuracy", "macro-F1", "retrieval recall@1", "MRR"]
    out += [
        f"Both arms continue pretraining the checkpoint for {arg(r['pretrain_min'])} minutes, "
        f"then fine-tune on supersenses for {arg(r['finetune_min'])}; sentence-order accuracy "
        "is on valid rows (chance 0.5).",
        "",
        *table_lines([*head, "sentence-order accuracy"], rows, "lrrrrr"),
        "",
    ]
    return out


def recipes_section(r: Result) -> list[str]:
    """bench_recipes: the pretraining recipe sweep behind configs/bert_tiny.yaml."""
    cmd = f"python -m bench.bench_recipes --budget {arg(r['budget_minutes'])}"
    machine = [f"CPU flags {flags(r['cpu_flags'])}", f"{r['threads_per_run']} torch thread per run"]
    out = header("Pretraining recipes: the sweep (`bench_recipes`)", cmd, machine)
    rows = [
        [
            x["name"],
            x["round"],
            x["lever"],
            num(x["steps"]),
            num(x["tokens_per_s"]),
            num(x["valid_loss"], 3),
            pct(x["valid_accuracy"]),
            pct(x["cloze_top1"]),
            pct(x["cloze_top5"]),
        ]
        for x in r["runs"]
    ]
    head = ["run", "round", "lever", "steps", "tokens/s", "valid loss", "MLM acc"]
    out += [
        f"One `bert-train` run of {arg(r['budget_minutes'])} minutes per lever, scored on "
        "whole-word cloze items of both valid splits (the same items for every run that keeps "
        "the default's vocabulary; valid loss and MLM accuracy use each run's own masking, so "
        "the cloze columns are the comparable ones).",
        "",
        *table_lines([*head, "cloze top-1", "cloze top-5"], rows, "lrlrrrrrr"),
        "",
    ]
    return out


def rerank_section(r: Result) -> list[str]:
    """bench_rerank: TF-IDF, the bi-encoder alone and its top-k reranked; /rerank latency."""
    lat = r["latency"]
    cmd = "python -m bench.bench_rerank" + (" --quick" if r.get("quick") else "")
    machine = [
        f"CPU flags {flags(r['cpu']['flags'])}",
        f"{r['threads']} torch thread, server at {lat['server_threads']} thread ({lat['precision']})",
        f"torch {r['torch']}",
    ]
    out = header("Reranking (`bench_rerank`)", cmd, machine)
    systems = (
        ("TF-IDF", r["tfidf"]),
        ("bi-encoder alone (`checkpoints/default`)", r["retriever"]),
        (f"bi-encoder top-{r['top_k']} + `checkpoints/reranker`", r["reranked"]),
    )
    rows = [
        [
            name,
            *retrieval_cells(m),
            ratio(m["recall@1"] / r["retriever"]["recall@1"]),
            ratio(m["recall@1"] / r["tfidf"]["recall@1"]),
        ]
        for name, m in systems
    ]
    head = ["system", "recall@1", "recall@10", "MRR", "recall@1 / bi-encoder", "/ TF-IDF"]
    out += [
        f"{num(r['queries'])} valid examples, each to find its definition among "
        f"{num(r['candidates'])}; the top {r['top_k']} hold the answer for "
        f"{pct(r['first_stage_recall'])} of them (the ceiling of any reranker at recall@1).",
        "",
        *table_lines(head, rows, "lrrrrr"),
        "",
        f"`POST /rerank` with {lat['documents']} documents, one query at a time "
        f"({num(lat['requests'])} requests): p50 {num(lat['p50_ms'], 1)} ms, p99 "
        f"{num(lat['p99_ms'], 1)} ms; served recall@1 {num(r['served']['recall@1'], 4)} "
        f"(in process {num(r['served']['in_process_recall@1'], 4)}).",
        "",
    ]
    return out


def retrieval_section(r: Result) -> list[str]:
    """bench_retrieval: TF-IDF and each checkpoint, dense and sparse; what the training cost."""
    cmd = "python -m bench.bench_retrieval" + (" --quick" if r.get("quick") else "")
    machine = [
        f"CPU flags {flags(r.get('cpu_flags'))}",
        f"{r['threads']} torch threads",
        f"torch {r['torch']}",
    ]
    out = header("Retrieval (`bench_retrieval`)", cmd, machine)
    tfidf = r["tfidf"]
    head = ["system", "pooling", "recall@1", "recall@10", "MRR", "recall@1 / TF-IDF"]
    rows = [["TF-IDF", "-", *retrieval_cells(tfidf), "1.00x"]]
    notes = []
    for c in r["checkpoints"]:
        for label, pooling, m in (
            (c["name"], c["pooling"], c["retrieval"]),
            (f"{c['name']}, sparse (SPLADE from its MLM head)", "splade max", c["sparse"]["ours"]),
        ):
            rows.append(
                [label, pooling, *retrieval_cells(m), ratio(m["recall@1"] / tfidf["recall@1"])]
            )
        dims = c["sparse"]["active_dims"]
        notes.append(
            f"- {c['name']}: valid MLM accuracy {num(c['mlm']['accuracy'], 4)}; sparse vectors "
            f"with {num(dims['queries'])} active dimensions per query and "
            f"{num(dims['candidates'])} per definition, scored by dot product (scaled to unit "
            f"length first: recall@1 {num(c['sparse']['cosine']['recall@1'], 4)}); "
            + "; ".join(
                f"{p} pooling: recall@1 {num(m['recall@1'], 4)}"
                for p, m in c.get("retrieval_by_pooling", {}).items()
                if p != c["pooling"]
            )
        )
    st = r.get("step_timing", {})
    if "joint_over_mlm" in st:
        notes.append(
            f"- what the contrastive stage costs per step ({st['model']}, {st['threads']} threads, "
            f"median of {st['steps_timed']} interleaved steps): MLM-only "
            f"{num(st['mlm_s_per_step'], 3)} s, joint MLM + contrastive "
            f"{num(st['joint_s_per_step'], 3)} s (x{num(st['joint_over_mlm'], 2)})"
        )
    return [
        *out,
        f"{num(r['queries'])} valid usage examples, each to find its own definition among "
        f"{num(r['candidates'])} (`{r['corpus']}`): dense rows by cosine of pooled embeddings.",
        "",
        *table_lines(head, rows, "llrrrr"),
        "",
        *notes,
        "",
    ]


# --- precision: bench_precision and the int8 study (the scripts print these tables too) ---------


def _gate(label: str, s: Result) -> str:
    """A bench_precision system's gate cell: ``"pass (0.967 / 0.980)"``, ``"FAIL, serves fp32"``;
    ``"-"`` for the anchors, which have none."""
    gate = s.get("gate")
    if not gate:
        return "-"
    fm = (
        ""
        if gate["top5_overlap"] is None
        else f" ({gate['top5_overlap']:.3f} / {gate['top1_agreement']:.3f})"
    )
    served = "" if s["served"] == label.split()[-1] else f", serves {s['served']}"
    return f"{'pass' if gate['passed'] else 'FAIL'}{fm}{served}"


def precision_tables(r: Result) -> list[str]:
    """bench_precision's tables, as it prints them: per model each system's speed and accuracy
    against ours fp32; per served model each precision (and auto) over HTTP."""
    out: list[str] = []
    head = ["system", "sentences/s", "vs ours fp32", "vs hf fp32", "min cosine"]
    head += ["recall@10 delta", "gate (top-5 / top-1)"]
    for m in r["forward"]:
        rows = [
            [
                label,
                num(s["sentences_per_s"]),
                ratio(s["vs_ours_fp32"]),
                ratio(s["vs_hf_fp32"]),
                f"{s['min_cosine']:.4f}",
                f"{s['recall_delta']:+.3f}",
                _gate(label, s),
            ]
            for label, s in m["systems"].items()
        ]
        out += [
            f"**{m['model']}** ({m['shape']}, {m['tokens_per_batch']} tokens per batch of 32, "
            f"{r['threads']} threads)",
            "",
            *table_lines(head, rows, "lrrrrrl"),
            "",
        ]
    paths = ("/v1/embeddings", "/fill-mask")
    head = ["precision", "serves"]
    for path in paths:
        head += [f"{path} req/s (p50 / p99 ms)", "vs fp32"]
    for h in r["http"]:
        fp32 = h["servers"]["fp32"]
        rows = []
        for precision, row in h["servers"].items():
            cells = [precision, row["effective"]]
            for path in paths:
                if path in row:
                    x = row[path]
                    cells += [
                        f"{num(x['rps'])} ({x['p50_ms']:g} / {x['p99_ms']:g})",
                        ratio(x["rps"] / fp32[path]["rps"]),
                    ]
                else:
                    cells += ["-", "-"]
            rows.append(cells)
        out += [
            f"**HTTP, {h['model']}** (1 torch thread, wrk on the other core)",
            "",
            *table_lines(head, rows, "llrrrr"),
            "",
        ]
    return out


def precision_section(r: Result) -> list[str]:
    """bench_precision: ours in fp32 / bf16 / int8 against transformers and ONNX Runtime, and
    the server at each precision under wrk."""
    random_models = [m["model"] for m in r["forward"] if m["model"] != "checkpoint"]
    cmd = "python -m bench.bench_precision"
    if random_models != ["default", *ENCODER_SHAPES]:
        cmd += f" --models {','.join(random_models)}"
    if r["checkpoint"]:
        cmd += f" --checkpoint {r['checkpoint']}"
    cmd += f" --threads {r['threads']}"
    if not r["http"]:
        cmd += " --no-http"
    elif r["http"][0]["model"] != ("checkpoint" if r["checkpoint"] else "mini"):
        cmd += f" --http-model {r['http'][0]['model']}"
    machine = [
        f"CPU flags {flags(r['cpu_flags'])}",
        f"{r['threads']} threads for torch and ONNX Runtime alike",
        f"torch {r['torch']}",
    ]
    out = header(
        "Precision against ONNX Runtime and transformers (`bench_precision`)", cmd, machine
    )
    return [
        *out,
        "Batches of 32 held-out glosses, tokenized beforehand; every system in turn round by "
        "round, best round kept. `hf` is transformers' `AutoModel` on padded batches, `ort` the "
        "same model through `torch.onnx.export` (and `quantize_dynamic`, QInt8, for int8); ours "
        "is the server's forward at each precision, gated against fp32 as the server loads it "
        "(a failing one is timed anyway, marked). Min cosine and recall@10 delta are against "
        "ours fp32. Over HTTP: `bert-serve` at each precision and `auto`, one gloss per request.",
        "",
        *precision_tables(r),
    ]


def study_tables(r: Result) -> list[str]:
    """study_int8's tables, as it prints them: per model each lever's gate figures and speed."""
    out: list[str] = []
    head = ["lever", "min cosine", "recall@10 delta", "top-5 / top-1", "gate", "speed vs fp32"]
    for m in r["models"]:
        rows = []
        for row in m["levers"]:
            g = row["gate"]
            if g is None:
                rows.append([row["lever"], "-", "-", "-", "-", "1.00x"])
                continue
            fm = (
                "-"
                if g["top5_overlap"] is None
                else f"{g['top5_overlap']:.3f} / {g['top1_agreement']:.3f}"
            )
            rows.append(
                [
                    row["lever"].strip(),
                    f"{g['min_cosine']:.4f}",
                    f"{g['recall_delta']:+.3f}",
                    fm,
                    "pass" if g["passed"] else "fail",
                    ratio(row["speedup_vs_fp32"]),
                ]
            )
        out += [
            f"**{m['model']}** ({m['shape']}, {m['tokens_per_batch']} tokens per batch of 32; "
            f"fp32 recall@10 {num(m['reference_recall_at_10'], 3)})",
            "",
            *table_lines(head, rows, "lrrllr"),
            "",
        ]
    return out


def study_section(r: Result) -> list[str]:
    """study_int8: every int8 lever (and bf16) on the same weights, against fp32."""
    names = [m["model"] for m in r["models"]]
    cmd = "python -m bench.study_int8"
    models = [n for n in names if n == "default" or n in ENCODER_SHAPES]
    if models != ["default", *ENCODER_SHAPES]:
        cmd += f" --models {','.join(models)}"
    cmd += "".join(
        f" --checkpoint {m['model']}={m['path']}" for m in r["models"] if m["model"] not in models
    )
    cmd += f" --threads {r['threads']}"
    if "rounds" in r:
        cmd += f" --rounds {r['rounds']}"
    machine = [
        f"CPU flags {flags(r['cpu_flags'])}",
        f"{r['threads']} torch thread{'s' if r['threads'] != 1 else ''}, {r['clock']}",
        f"torch {r['torch']}",
    ]
    out = header("Int8: every lever on the same weights (`study_int8`)", cmd, machine)
    out += [
        "Each lever's gate figures against fp32 on the probe set (min cosine, recall@10 delta, "
        "fill-mask top-5 / top-1 where the model has an MLM head), and its speed against fp32 "
        "on batches of 32 held-out glosses through the server's forward, levers interleaved "
        "round by round, best round kept. `mini` and `base` are random weights of "
        "all-MiniLM-L6-v2's and BERT-base's shapes; the lever names are explained in "
        "[precision.md](precision.md).",
        "",
    ]
    if r.get("note"):
        out += [f"Note: {r['note'].rstrip('.')}.", ""]
    return [*out, *study_tables(r)]


def diagnosis_tables(d: Result) -> list[str]:
    """study_int8 --diagnose's tables, as it prints them: activation ranges per matmul, each
    matmul kind and each layer alone in int8, the weights' rounding alone."""
    rows = [
        [x["layer"], x["matmul"], x["max"], x["median"], x["ratio"], x["top_channels"]]
        for x in d["ranges"]
    ]
    out = [
        f"**{d['model']}: activation ranges** (max |x| per input channel over the calibration "
        "text: the largest, the median channel's, their ratio, the top channels)",
        "",
        *table_lines(["layer", "matmul", "max", "median", "ratio", "top channels"], rows, "rlrrrl"),
        "",
    ]

    def cells(row: Result) -> list[str]:
        return [f"{v['min_cosine']:.4f} / {v['recall_delta']:+.3f}" for v in row.values()]

    head = ["only this matmul in int8 (all layers)", "per-batch scale", "per-token"]
    rows = [[kind, *cells(row)] for kind, row in d["kinds"].items()]
    out += [*table_lines([*head, "SQ + per-token"], rows), ""]
    head = ["only this layer in int8", "per-batch, no SQ", "served recipe"]
    out += [*table_lines(head, [[i, *cells(row)] for i, row in d["layers"].items()]), ""]
    w = d["weights_only"]
    return [
        *out,
        f"Weights alone rounded to int8 (activations fp32): {w['min_cosine']:.4f} / "
        f"{w['recall_delta']:+.3f} (min cosine / recall@10 delta).",
    ]


def diagnosis_section(d: Result) -> list[str]:
    """study_int8 --diagnose: where plain int8's error comes from, on one model."""
    name = d["model"]
    cmd = f"python -m bench.study_int8 --diagnose {name}" + ("" if name == "default" else "=DIR")
    machine = ["not recorded (one torch thread unless `--threads` says otherwise)"]
    out = header("Int8: where the error comes from (`study_int8 --diagnose`)", cmd, machine)
    out += [
        "With the served kernels and the gate's probe set; each cell is min cosine / recall@10 "
        "delta against fp32. DIR is the model's checkpoint directory.",
        "",
    ]
    return [*out, *diagnosis_tables(d), ""]


def reliability_section(r: Result) -> list[str]:
    """make reliability: each test's figures, as the suite recorded them."""
    out = header(
        "Reliability (`make reliability`)",
        'pytest -q tests/reliability -m "" --figures-json bench/results/reliability.json',
        ["see each test's figures"],
    )
    rows = [
        [
            f"`{nodeid.split('tests/reliability/', 1)[-1]}`",
            ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in f.items()),
        ]
        for nodeid, f in r.items()
    ]
    return [*out, *table_lines(["test", "figures"], rows), ""]


SECTIONS: dict[str, Callable[[Result], list[str]]] = {
    "bench_model": model_section,
    "bench_serve": serve_section,
    "bench_rerank": rerank_section,
    "bench_retrieval": retrieval_section,
    "bench_cloze": cloze_section,
    "bench_finetune": finetune_section,
    "bench_sop": sop_section,
    "bench_precision": precision_section,
    "recipes": recipes_section,
    "study_int8": study_section,
    "study_int8_diagnosis": diagnosis_section,
    "reliability": reliability_section,
}
ORDER = (*BENCHES, "recipes", "study_int8", "study_int8_diagnosis", "reliability")

INTRO = """\
# Benchmarks

What each benchmark measured in its last committed run, one section per results file in
`bench/results/`. **Generated** by `python -m bench.report` from those files; do not edit by
hand: commit a new result and run it again (`tests/bench/test_report.py` fails while this page
and the results disagree). `make bench` runs every benchmark (`python -m bench.run_all`); each
runs alone as `python -m bench.<name>` (`--quick` for a short variant) and writes
`bench/results/<name>.json`.

Unless a section says otherwise the figures come from the shared 2-core build machine, with other
jobs running: wall-clock figures move by +-30% between runs, and the ratios inside one run are
what counts. The CPU flags decide what bf16 and int8 can do (see [precision.md](precision.md)).
"""


def render(results: Path = RESULTS) -> str:
    """The page for the results files in ``results``; ValueError on a file without a renderer."""
    found = {p.stem: p for p in sorted(Path(results).glob("*.json"))}
    unknown = sorted(set(found) - set(SECTIONS))
    if unknown:
        raise ValueError(
            f"no section renderer for {', '.join(f'{u}.json' for u in unknown)}: add one to "
            "bench/report.py SECTIONS"
        )
    lines = [INTRO]
    for name in ORDER:
        if name in found:
            lines += SECTIONS[name](json.loads(found[name].read_text(encoding="utf-8")))
    missing = [f"`{b}`" for b in BENCHES if b not in found]
    if missing:
        lines += [
            "## Not committed yet",
            "",
            f"No results file for {', '.join(missing)}: run `python -m bench.<name>` and then "
            "`python -m bench.report`. Figures from their earlier runs are quoted, with the commit "
            "that recorded them, in [training.md](training.md) and [serving.md](serving.md).",
            "",
        ]
    return "\n".join(lines).rstrip("\n") + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.report", description=__doc__.split("\n")[0])
    ap.add_argument("--results", type=Path, default=RESULTS, help="the results directory")
    ap.add_argument("--out", type=Path, default=PAGE, help=f"the page (default: {PAGE})")
    ap.add_argument("--check", action="store_true", help="compare, do not write; 1 if different")
    args = ap.parse_args(argv)
    page = render(args.results)
    if args.check:
        current = args.out.read_text(encoding="utf-8") if args.out.exists() else ""
        if current != page:
            print(f"{args.out} is stale: run python -m bench.report", file=sys.stderr)
            return 1
        return 0
    args.out.write_text(page, encoding="utf-8")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
