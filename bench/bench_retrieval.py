"""Sentence-embedding retrieval: our checkpoints vs a TF-IDF baseline, plus what it costs.

    python -m bench.bench_retrieval [--quick] [--threads N] [--default DIR]
                                    [--checkpoint NAME=DIR ...] [--baseline NAME]

Task: every usage example of data/wordnet.valid.txt must find its own definition among the
definitions (headwords removed) of all valid glosses that have examples: 1,965 queries, 1,330
candidates (`training.data.pairs.retrieval_set`). Each system scores the full (queries x candidates)
matrix; recall@1, recall@10 and MRR count ties at their expected value under random
tie-breaking (`training.evaluation.retrieval.retrieval_metrics`), which is what makes TF-IDF's all-zero
rows (a query sharing no word with any definition) honest 1-in-1,330 guesses.

* TF-IDF: lowercase word counts x smooth idf fitted on the set's own texts, cosine.
* Each checkpoint (the default one, and every `--checkpoint NAME=DIR`): cosine of L2-normalised
  pooled embeddings, with the pooling its config.json records (else mean); the other pooling
  too, for reference (not with --quick). Ratios are ours / TF-IDF on the very same pairs.
* Sparse: each checkpoint's SPLADE vectors from its MLM head, computed as the server's
  /embed_sparse computes them (`training.evaluation.sparse`: max over the text's tokens of
  log(1 + relu(logits)), [CLS]/[SEP] left out), scored by dot product; a row of its own beside
  the dense one, with the vectors' mean number of active dimensions. The default's MLM was never
  trained for SPLADE, and the row says what that gives.
* MLM: validation masked-token accuracy of each checkpoint, exactly as `bert-eval` computes it
  (all rows of data/wordnet.valid.txt + data/pydocs.valid.txt, fixed masks, the checkpoint's
  own sequence length and masking settings: `training.evaluation.mlm.evaluate_checkpoint_mlm`). The
  acceptance check compares the default checkpoint with `--baseline` (default: the first
  `--checkpoint` given, meant to be the MLM-only model of the same budget).
* Training cost: what each checkpoint's training_config.yaml records (`run.train_time_s`:
  seconds inside optimizer steps; `run.elapsed_s`: wall clock with evaluations and saves;
  `train.init_from`: the previous stage, followed when that directory exists). A checkpoint
  that records none is reported as such: nothing is estimated from prose.
* Step cost: seconds per optimizer step of BERT-tiny (configs/bert_tiny.yaml, the default
  checkpoint's tokenizer, packed 128-token rows), MLM-only vs joint MLM + contrastive, both
  through `Trainer.train_step`, steps interleaved so machine noise hits both alike; medians of
  wall-clock and of process CPU seconds (the latter barely moves when other jobs share the
  cores, the former does). The joint
  recipe is that of the first benchmarked checkpoint trained with a contrastive weight (else
  the TrainConfig defaults with contrastive_weight 1). Skipped, saying so, when the trainer has
  no contrastive objective.

Results: a markdown table on stdout and bench/results/bench_retrieval.json. Deliberately not
measured: GPU speed, embedding throughput (see the serving benchmarks), other corpora.
"""

from __future__ import annotations

import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import yaml

from bench.common import (
    CACHE,
    DEFAULT_CHECKPOINT,
    RETRIEVAL_FILE,
    ROOT,
    TRAIN_FILES,
    VALID_FILES,
    bench_parser,
    machine_fields,
    named_checkpoints,
    ratio,
    setup_logging,
    table_lines,
    write_results,
)

log = logging.getLogger(__name__)
TINY_CONFIG = ROOT / "configs" / "bert_tiny.yaml"
METRICS = ("recall@1", "recall@10", "mrr")
TARGET_RATIO = 1.5  # issue 8: recall@1 >= 1.5x TF-IDF's
ACCURACY_SLACK = 0.01  # ... with valid MLM accuracy within 1 point of the MLM-only model
# Train settings that define the contrastive objective, copied into the joint timing recipe.
CONTRASTIVE_KEYS = (
    "mlm_weight",
    "contrastive_weight",
    "contrastive_data",
    "contrastive_batch_size",
    "contrastive_max_length",
    "contrastive_symmetric",
    "temperature",
    "pooling",
)


def read_training_config(directory: Path) -> dict[str, Any]:
    path = directory / "training_config.yaml"
    if not path.is_file():
        return {}
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    return data if isinstance(data, dict) else {}


# ----------------------------------------------------------------------------------------------
# Training cost as recorded


def recorded_cost(directory: Path, depth: int = 0) -> dict[str, Any]:
    """The training cost a checkpoint records, following `train.init_from` to earlier stages."""
    cfg = read_training_config(directory)
    train, run = cfg.get("train") or {}, cfg.get("run") or {}
    out: dict[str, Any] = {
        "checkpoint": str(directory),
        "objective": {k: train.get(k) for k in ("mlm_weight", "contrastive_weight")},
        "contrastive_data": train.get("contrastive_data"),
        "steps": run.get("step"),
        "train_time_s": run.get("train_time_s"),
        "elapsed_s": run.get("elapsed_s"),
        "time_budget_minutes": train.get("time_budget_minutes"),
    }
    if not cfg:
        out["note"] = "no training_config.yaml"
    elif run.get("train_time_s") is None:
        out["note"] = "absent: this checkpoint's training_config.yaml records no training time"
    init_from = train.get("init_from")
    if init_from:
        previous = Path(init_from)
        previous = previous if previous.is_absolute() else ROOT / previous
        if previous.resolve() == Path(directory).resolve():
            # A stage published over the checkpoint it started from (checkpoints/default): the
            # earlier stage's record is gone from this directory (its card keeps it).
            out["init_from"] = {
                "checkpoint": str(init_from),
                "note": "an earlier version of this same directory, overwritten when published",
            }
        elif previous.is_dir() and depth < 5:
            out["init_from"] = recorded_cost(previous, depth + 1)
        else:
            out["init_from"] = {"checkpoint": str(init_from), "note": "directory not found"}
    return out


def total_minutes(cost: dict[str, Any]) -> float | None:
    """Recorded training minutes of a checkpoint and its earlier stages; None if any is absent."""
    seconds = cost.get("train_time_s")
    if seconds is None:
        return None
    if "init_from" in cost:
        earlier = total_minutes(cost["init_from"])
        return None if earlier is None else seconds / 60 + earlier
    return seconds / 60


def contrastive_cost(cost: dict[str, Any], step_timing: dict[str, Any] | None) -> dict[str, Any]:
    """Minutes the contrastive objective cost this checkpoint, from what it records.

    A stage started from another checkpoint (init_from) with a contrastive weight costs its own
    training time. A joint run from scratch has no separate stage: its contrastive share is
    estimated as steps x (joint - MLM-only seconds per step) from the step timing of this run.
    """
    weight = cost["objective"].get("contrastive_weight") or 0
    if weight <= 0:
        return {"minutes": None, "how": "no contrastive objective (MLM only)"}
    seconds = cost.get("train_time_s")
    if seconds is None:
        return {"minutes": None, "how": cost.get("note", "absent")}
    if "init_from" in cost:
        total = total_minutes(cost)
        return {
            "minutes": seconds / 60,
            "how": "recorded train_time_s of the contrastive stage, started from "
            f"{cost['init_from']['checkpoint']}; all stages: "
            + ("earlier stage not recorded" if total is None else f"{total:.1f} min"),
        }
    if step_timing and cost.get("steps"):
        extra = step_timing["joint_s_per_step"] - step_timing["mlm_s_per_step"]
        return {
            "minutes": cost["steps"] * extra / 60,
            "how": f"joint run ({seconds / 60:.1f} min recorded in all): {cost['steps']} steps x "
            f"{extra:.3f} s measured extra per joint step",
        }
    return {"minutes": None, "how": f"joint run, {seconds / 60:.1f} min in all; no step timing"}


# ----------------------------------------------------------------------------------------------
# Seconds per step: MLM-only vs joint


def joint_recipe(checkpoints: dict[str, Path]) -> tuple[dict[str, Any], dict[str, Any], str]:
    """(train overrides, model overrides, where from) of the joint objective to time."""
    for name, directory in checkpoints.items():
        cfg = read_training_config(directory)
        train = cfg.get("train") or {}
        if (train.get("contrastive_weight") or 0) > 0:
            model = cfg.get("model") or {}
            dropout = {
                k: model[k]
                for k in ("hidden_dropout_prob", "attention_probs_dropout_prob")
                if k in model
            }
            return {k: train[k] for k in CONTRASTIVE_KEYS if k in train}, dropout, name
    return {"contrastive_weight": 1.0}, {}, "TrainConfig defaults, contrastive_weight 1"


def time_steps(checkpoints: dict[str, Path], default: Path, args) -> dict[str, Any]:
    """Median seconds per optimizer step of BERT-tiny, MLM-only vs joint, interleaved."""
    try:
        from training.pretrain.contrastive import build_contrastive_data
        from training.pretrain.prepare import build_model_config
        from training.pretrain.trainer import Trainer
    except ImportError as e:
        return {"skipped": f"the trainer has no contrastive objective yet ({e})"}
    from tokenization import WordPieceTokenizer
    from training.data.corpus import build_dataset, load_corpus
    from training.pretrain.config import TrainConfig

    train_over, model_over, source = joint_recipe(checkpoints)
    tokenizer = WordPieceTokenizer.from_pretrained(default)
    corpus = [str(f) for f in TRAIN_FILES]
    valid = [str(f) for f in VALID_FILES]
    tiny = yaml.safe_load(TINY_CONFIG.read_text(encoding="utf-8"))
    model_section = {**tiny["model"], **model_over}
    # A step schedule long enough that the timed steps all run near the peak LR.
    base = {
        **tiny["train"],
        "max_steps": 100_000,
        "device": "cpu",
        "precision": "fp32",
        "cache_dir": str(CACHE),
    }
    corpora = load_corpus(corpus, tokenizer, CACHE)
    trainers = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, train_section in (("mlm", base), ("joint", {**base, **train_over})):
            cfg = TrainConfig.from_dict(train_section)
            model_config = build_model_config(model_section, tokenizer.vocab_size, cfg)
            data = build_dataset(
                corpora, tokenizer, seq_len=cfg.max_seq_length, packing=cfg.packing
            )
            contrastive = None
            if cfg.contrastive_weight > 0:
                contrastive = build_contrastive_data(
                    cfg, tokenizer, corpus=corpus, holdout=valid, train_corpora=corpora
                )
            trainers[name] = Trainer(
                model_config=model_config,
                cfg=cfg,
                tokenizer=tokenizer,
                train_data=data,
                valid_data=None,
                output_dir=Path(tmp) / name,
                contrastive=contrastive,
            )
        seconds: dict[str, list[float]] = {"mlm": [], "joint": []}
        # CPU seconds of the whole process (all threads) per step: on a shared machine the
        # wall clock also counts time spent waiting for a core, the CPU time does not.
        cpu: dict[str, list[float]] = {"mlm": [], "joint": []}
        tokens: dict[str, list[int]] = {"mlm": [], "joint": []}
        warmup, steps = (2, 6) if args.quick else (3, args.steps)
        for i in range(warmup + steps):
            order = ("mlm", "joint") if i % 2 == 0 else ("joint", "mlm")
            for name in order:
                t = trainers[name]
                c0 = time.process_time()
                stats = t.train_step(t.model, clock=time.perf_counter, elapsed=0.0)
                if i >= warmup:
                    cpu[name].append(time.process_time() - c0)
                    seconds[name].append(stats.seconds)
                    tokens[name].append(stats.tokens)
    joint_cfg = trainers["joint"].cfg
    mlm_s, joint_s = (statistics.median(seconds[n]) for n in ("mlm", "joint"))
    return {
        "model": "BERT-tiny (configs/bert_tiny.yaml)",
        "recipe": source,
        "joint_settings": {k: getattr(joint_cfg, k) for k in CONTRASTIVE_KEYS},
        "model_overrides": model_over,
        "batch_size": joint_cfg.batch_size,
        "steps_timed": steps,
        "threads": torch.get_num_threads(),
        "mlm_s_per_step": mlm_s,
        "joint_s_per_step": joint_s,
        "joint_over_mlm": joint_s / mlm_s,
        "mlm_cpu_s_per_step": statistics.median(cpu["mlm"]),
        "joint_cpu_s_per_step": statistics.median(cpu["joint"]),
        "mlm_s_per_step_min": min(seconds["mlm"]),
        "joint_s_per_step_min": min(seconds["joint"]),
        "mlm_tokens_per_step": statistics.mean(tokens["mlm"]),
        "joint_tokens_per_step": statistics.mean(tokens["joint"]),
    }


# ----------------------------------------------------------------------------------------------
# Retrieval and MLM per checkpoint


def bench_checkpoint(name: str, directory: Path, rset, tfidf: dict, args) -> dict[str, Any]:
    from model import BertForMaskedLM
    from tokenization import WordPieceTokenizer
    from training.evaluation.mlm import evaluate_checkpoint_mlm
    from training.evaluation.retrieval import checkpoint_pooling, evaluate_retrieval
    from training.evaluation.sparse import evaluate_checkpoint_sparse_retrieval

    pooling = checkpoint_pooling(directory)
    model = BertForMaskedLM.from_pretrained(directory)
    tokenizer = WordPieceTokenizer.from_pretrained(directory)
    max_length = int(
        (read_training_config(directory).get("train") or {}).get("max_seq_length", 128)
    )
    poolings = [pooling] if args.quick else [pooling, "cls" if pooling == "mean" else "mean"]
    by_pooling = {}
    for p in poolings:
        t0 = time.perf_counter()
        m = evaluate_retrieval(model, tokenizer, rset, pooling=p, max_length=max_length)
        by_pooling[p] = {k: m[k] for k in METRICS} | {"seconds": time.perf_counter() - t0}
    ours = by_pooling[pooling]
    t0 = time.perf_counter()
    sparse = evaluate_checkpoint_sparse_retrieval(directory, [str(RETRIEVAL_FILE)])
    log.info("[%s] sparse %s (%.0f s)", name, sparse["ours"], time.perf_counter() - t0)
    t0 = time.perf_counter()
    mlm = evaluate_checkpoint_mlm(directory, [str(f) for f in VALID_FILES])
    log.info(
        "[%s] %s recall@1 %.4f (TF-IDF %.4f), MLM accuracy %.4f (%.0f s)",
        name,
        pooling,
        ours["recall@1"],
        tfidf["recall@1"],
        mlm["accuracy"],
        time.perf_counter() - t0,
    )
    return {
        "name": name,
        "checkpoint": str(directory),
        "pooling": pooling,
        "retrieval": {k: ours[k] for k in METRICS},
        "ratio_to_tfidf": {k: ours[k] / tfidf[k] if tfidf[k] else None for k in METRICS},
        "retrieval_by_pooling": by_pooling,
        "sparse": {
            k: sparse[k] for k in ("ours", "cosine", "ratio_to_tfidf", "active_dims", "pooling")
        },
        "mlm": {k: mlm[k] for k in ("loss", "accuracy", "perplexity", "masked_tokens", "rows")},
        "cost": recorded_cost(directory),
    }


def markdown(report: dict[str, Any]) -> str:
    """TF-IDF and each checkpoint side by side, with recall@1 as a ratio to TF-IDF's and what the
    checkpoint's training cost; then notes on cost, the other pooling and the step timing."""
    tfidf = report["tfidf"]
    rows = [
        ["TF-IDF", "-", *(f"{tfidf[k]:.4f}" for k in METRICS), ratio(1.0), "-", "-", "-"],
    ]
    for r in report["checkpoints"]:
        m, cc = r["retrieval"], r["contrastive_cost"]
        total = r["total_train_minutes"]
        recall_ratio = r["ratio_to_tfidf"]["recall@1"]
        rows.append(
            [
                r["name"],
                r["pooling"],
                *(f"{m[k]:.4f}" for k in METRICS),
                "-" if recall_ratio is None else f"**{ratio(recall_ratio)}**",
                f"{100 * r['mlm']['accuracy']:.2f}%",
                "not recorded" if total is None else f"{total:.1f} min",
                "-" if cc["minutes"] is None else f"{cc['minutes']:.1f} min",
            ]
        )
        sp = r["sparse"]
        rows.append(
            [
                f"{r['name']}, sparse (SPLADE from its MLM head)",
                f"splade {sp['pooling']}",
                *(f"{sp['ours'][k]:.4f}" for k in METRICS),
                ratio(sp["ratio_to_tfidf"]["recall@1"]),
                "-",
                "-",
                "-",
            ]
        )
    header = ["system", "pooling", "recall@1", "recall@10", "MRR", "recall@1 / TF-IDF"]
    header += ["valid MLM acc", "training, all stages", "contrastive cost"]
    lines = [
        f"Retrieval on {report['queries']:,} valid examples -> their definition among "
        f"{report['candidates']:,} (data/wordnet.valid.txt); ties at their expected value.",
        "",
        *table_lines(header, rows),
    ]
    lines.append("")
    for r in report["checkpoints"]:
        lines.append(f"- {r['name']}: contrastive cost: {r['contrastive_cost']['how']}")
        dims = r["sparse"]["active_dims"]
        lines.append(
            f"  - sparse vectors: {dims['queries']:,.0f} active dimensions per query, "
            f"{dims['candidates']:,.0f} per definition (dot product over them); scaled to unit "
            f"length first: recall@1 {r['sparse']['cosine']['recall@1']:.4f}"
        )
        for p, m in r["retrieval_by_pooling"].items():
            if p != r["pooling"]:
                lines.append(f"  - with {p} pooling instead: recall@1 {m['recall@1']:.4f}")
    st = report["step_timing"]
    if "skipped" in st:
        lines.append(f"- step timing skipped: {st['skipped']}")
    else:
        lines.append(
            f"- BERT-tiny, {st['threads']} thread(s), median of {st['steps_timed']} interleaved "
            f"steps: MLM-only {st['mlm_s_per_step']:.3f} s/step, joint MLM + contrastive "
            f"{st['joint_s_per_step']:.3f} s/step (x{st['joint_over_mlm']:.2f}); CPU time "
            f"{st['mlm_cpu_s_per_step']:.3f} vs {st['joint_cpu_s_per_step']:.3f} s/step "
            f"(x{st['joint_cpu_s_per_step'] / st['mlm_cpu_s_per_step']:.2f}); recipe: "
            f"{st['recipe']}"
        )
    acc = report.get("acceptance")
    if acc:
        lines.append(
            f"- acceptance (default vs {acc['baseline']}): recall@1 x{acc['ratio']:.2f} TF-IDF "
            f"(target >= {TARGET_RATIO}: {'met' if acc['ratio_met'] else 'NOT met'}), MLM "
            f"accuracy {100 * acc['accuracy_delta']:+.2f} points (>= -1: "
            f"{'met' if acc['accuracy_met'] else 'NOT met'})"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = bench_parser(
        "bench_retrieval",
        __doc__,
        quick="one pooling, few timed steps",
        threads=torch.get_num_threads(),
    )
    parser.add_argument("--default", type=Path, default=DEFAULT_CHECKPOINT)
    parser.add_argument(
        "--checkpoint", action="append", default=[], metavar="NAME=DIR", help="also bench DIR"
    )
    parser.add_argument("--baseline", help="the NAME to hold the default's MLM accuracy against")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per objective")
    parser.add_argument("--skip-step-timing", action="store_true")
    args = parser.parse_args(argv)
    setup_logging()
    extra = named_checkpoints(args.checkpoint, parser, reserved={"default"})
    if args.baseline is not None and args.baseline not in extra:
        parser.error(f"--baseline {args.baseline!r} is not a --checkpoint name")
    baseline = args.baseline or next(iter(extra), None)
    torch.set_num_threads(args.threads)

    from training.data.pairs import retrieval_set
    from training.evaluation.retrieval import tfidf_retrieval

    t_start = time.perf_counter()
    rset = retrieval_set([RETRIEVAL_FILE])
    tfidf = tfidf_retrieval(rset)
    log.info("TF-IDF recall@1 %.4f on %d queries", tfidf["recall@1"], len(rset.queries))
    checkpoints = {"default": args.default, **extra}
    step_timing: dict[str, Any] = {"skipped": "--skip-step-timing"}
    if not args.skip_step_timing:
        t0 = time.perf_counter()
        step_timing = time_steps(checkpoints, args.default, args)
        log.info("step timing: %s (%.0f s)", step_timing, time.perf_counter() - t0)
    results = []
    for name, directory in checkpoints.items():
        r = bench_checkpoint(name, directory, rset, tfidf, args)
        r["contrastive_cost"] = contrastive_cost(
            r["cost"], None if "skipped" in step_timing else step_timing
        )
        r["total_train_minutes"] = total_minutes(r["cost"])
        results.append(r)
    report: dict[str, Any] = {
        "benchmark": "bench_retrieval",
        "quick": args.quick,
        **machine_fields(args.threads),
        "corpus": str(RETRIEVAL_FILE.relative_to(ROOT)),
        "queries": len(rset.queries),
        "candidates": len(rset.candidates),
        "tfidf": {k: tfidf[k] for k in METRICS},
        "checkpoints": results,
        "step_timing": step_timing,
    }
    if baseline is not None:
        ours, base = results[0], next(r for r in results if r["name"] == baseline)
        delta = ours["mlm"]["accuracy"] - base["mlm"]["accuracy"]
        ratio = ours["ratio_to_tfidf"]["recall@1"] or 0.0
        report["acceptance"] = {
            "baseline": baseline,
            "ratio": ratio,
            "ratio_met": ratio >= TARGET_RATIO,
            "accuracy_delta": delta,
            "accuracy_met": delta >= -ACCURACY_SLACK,
        }
    report["wall_s"] = time.perf_counter() - t_start
    print(markdown(report))
    write_results(args.out, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
