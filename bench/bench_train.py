"""MLM training: our trainer vs a plain PyTorch loop over `transformers.BertForMaskedLM`.

    python -m bench.bench_train [--quick] [--config configs/bert_mini.yaml] [--budget-minutes 10]
                                [--steps 12] [--threads 2] [--ddp] [--skip-quality]

Same model shape (the config's `model:` section), same vocabulary (our WordPiece, trained once on
data/*.train.txt and cached in .cache/bertserve/), same packed 128-token rows in the same order,
same micro-batch and accumulation, same process and thread count, fp32 both (bf16 autocast is
~10x slower than fp32 on CPUs without native bf16, see the report), dropout as in the config.

* Throughput: optimizer steps of the two systems interleaved in rounds, so machine noise hits
  both alike; tokens/s = rows x 128 / step time, after warm-up steps. Ours is
  `Trainer.train_step` (masking, sparse MLM head, clipping, AdamW with decay groups); the
  reference is the loop a `transformers` user writes: `DataCollatorForLanguageModeling`
  masking, `model(input_ids, attention_mask, labels)` (dense (B, T, V) logits and loss),
  clip, `AdamW(model.parameters())`. `--ddp` also times our trainer under
  `torchrun --nproc_per_node=2` with one thread per process (a subprocess, not interleaved).
* Quality per budget: both systems train from their own BERT init for the same wall-clock
  budget each, in interleaved slices of a few seconds of their own time; then validation MLM
  loss / masked-token accuracy on the same rows with the same fixed masks (training.evaluation.mlm).
  Ours lays warmup + cosine decay over the budget (time-budget mode); the reference warms up
  over the same share of the budget and then keeps the peak LR constant, since a plain loop
  does not know when the budget ends. Same peak LR, betas, eps, weight decay, clipping.

Results: a markdown table on stdout and bench/results/bench_train.json. Deliberately not
measured: GPU speed, torch.compile (no gain measured on this CPU, 2 min of compile), data loading
(both systems read the same in-memory rows).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch

from bench.common import (
    CACHE,
    ROOT,
    TRAIN_FILES,
    VALID_FILES,
    bench_parser,
    cpu_report,
    ratio,
    setup_logging,
    table_lines,
    write_results,
)

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------------------
# Shared set-up


def prepare(args: argparse.Namespace) -> SimpleNamespace:
    """Tokenizer (cached), packed train/valid rows, the model config and our TrainConfig."""
    from tokenization import WordPieceTokenizer
    from training.data.corpus import build_dataset, load_corpus
    from training.pretrain.config import load_run_config
    from training.pretrain.prepare import build_model_config

    overrides = [(k, v) for k, v in (args.set or [])]
    overrides += [("train.progress_bar", "false"), ("train.tensorboard", "false")]
    overrides += [("train.plot", "false"), ("train.precision", "fp32"), ("train.device", "cpu")]
    if args.batch_size:
        overrides.append(("train.batch_size", str(args.batch_size)))
    if args.accum:
        overrides.append(("train.grad_accum_steps", str(args.accum)))
    model_section, cfg = load_run_config(args.config, overrides)
    vocab_size = int(model_section.get("vocab_size", 8192))
    tok_dir = CACHE / f"bench_vocab_{vocab_size}"
    if not (tok_dir / "vocab.txt").is_file():
        t0 = time.perf_counter()
        tok = WordPieceTokenizer.train([str(f) for f in TRAIN_FILES], vocab_size=vocab_size)
        tok.save_pretrained(tok_dir)
        log.info("trained a %d-token vocabulary in %.0fs", tok.vocab_size, time.perf_counter() - t0)
    tok = WordPieceTokenizer.from_pretrained(tok_dir)
    seq = cfg.max_seq_length
    train = build_dataset(
        load_corpus(list(TRAIN_FILES), tok, CACHE), tok, seq_len=seq, packing=True
    )
    valid = build_dataset(
        load_corpus(list(VALID_FILES), tok, CACHE), tok, seq_len=seq, packing=True
    )
    model_config = build_model_config(model_section, tok.vocab_size, cfg)
    return SimpleNamespace(
        tok=tok, tok_dir=tok_dir, train=train, valid=valid, cfg=cfg, model_config=model_config
    )


class Ours:
    """Our trainer, driven one optimizer step at a time (its own loop minus logging/saving)."""

    name = "ours"

    def __init__(self, env: SimpleNamespace, workdir: Path, budget_s: float | None) -> None:
        from training.pretrain.trainer import Trainer

        cfg = dataclasses.replace(
            env.cfg,
            time_budget_minutes=budget_s / 60 if budget_s else None,
            max_steps=10**9 if budget_s else env.cfg.max_steps,
            eval_every=0,
            save_every=0,
        )
        self.trainer = Trainer(
            model_config=env.model_config,
            cfg=cfg,
            tokenizer=env.tok,
            train_data=env.train,
            valid_data=None,
            output_dir=workdir,
        )
        self.model = self.trainer.model
        self.used_s = 0.0  # this system's own training seconds
        self.steps = 0

    def step(self) -> tuple[int, float]:
        start = time.perf_counter()
        used = self.used_s
        st = self.trainer.train_step(
            self.model, clock=lambda: used + time.perf_counter() - start, elapsed=used
        )
        self.used_s = st.elapsed
        self.steps += 1
        return st.tokens, st.seconds


class _HFAdapter(torch.nn.Module):
    """Lets training.evaluation.mlm call a transformers model: logits at the masked rows only."""

    def __init__(self, hf: torch.nn.Module) -> None:
        super().__init__()
        self.hf = hf

    def forward(self, input_ids, attention_mask=None, prediction_mask=None, **_: Any):
        logits = self.hf(input_ids=input_ids, attention_mask=attention_mask).logits  # (B, T, V)
        return SimpleNamespace(logits=logits[prediction_mask])  # (N, V)


class HFLoop:
    """The plain loop a transformers user writes, on the same rows in the same order."""

    name = "transformers"

    def __init__(self, env: SimpleNamespace, budget_s: float | None) -> None:
        import transformers

        mc, cfg = env.model_config, env.cfg
        hf_config = transformers.BertConfig(
            vocab_size=mc.vocab_size,
            hidden_size=mc.hidden_size,
            num_hidden_layers=mc.num_hidden_layers,
            num_attention_heads=mc.num_attention_heads,
            intermediate_size=mc.intermediate_size,
            hidden_act=mc.hidden_act,
            hidden_dropout_prob=mc.hidden_dropout_prob,
            attention_probs_dropout_prob=mc.attention_probs_dropout_prob,
            max_position_embeddings=mc.max_position_embeddings,
            type_vocab_size=mc.type_vocab_size,
            layer_norm_eps=mc.layer_norm_eps,
            pad_token_id=mc.pad_token_id,
        )
        torch.manual_seed(cfg.seed)
        self.model = transformers.BertForMaskedLM(hf_config).train()
        hf_tok = transformers.BertTokenizerFast.from_pretrained(env.tok_dir)
        # transformers 5 ignores a vocab it cannot find without saying so: check we got ours.
        assert len(hf_tok) == env.tok.vocab_size, (len(hf_tok), env.tok.vocab_size)
        self.collator = transformers.DataCollatorForLanguageModeling(
            hf_tok, mlm_probability=cfg.mlm_probability, seed=cfg.seed
        )
        self.optimizer = torch.optim.AdamW(
            self.model.parameters(),
            lr=cfg.lr,
            betas=(cfg.adam_beta1, cfg.adam_beta2),
            eps=cfg.adam_eps,
            weight_decay=cfg.weight_decay,
        )
        from training.data.corpus import RowOrder

        self.order = RowOrder(len(env.train), cfg.seed)  # the same rows as ours, same order
        self.special = np.zeros(env.tok.vocab_size, dtype=bool)
        self.special[list(env.tok.special_ids)] = True
        self.env, self.cfg, self.budget_s = env, cfg, budget_s
        self.cursor, self.used_s, self.steps = 0, 0.0, 0

    def lr(self) -> float:
        cfg = self.cfg
        if self.budget_s is None:
            return cfg.lr
        warmup = cfg.warmup_fraction * self.budget_s
        return cfg.lr * min(1.0, self.used_s / warmup) if warmup > 0 else cfg.lr

    def step(self) -> tuple[int, float]:
        t0 = time.perf_counter()
        cfg = self.cfg
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr()
        tokens = 0
        for _ in range(cfg.grad_accum_steps):
            ids, _ = self.env.train.rows(self.order.rows(self.cursor, cfg.batch_size))
            self.cursor += cfg.batch_size
            inputs, labels = self.collator.torch_mask_tokens(
                torch.from_numpy(ids), special_tokens_mask=torch.from_numpy(self.special[ids])
            )
            out = self.model(
                input_ids=inputs, attention_mask=torch.ones_like(inputs), labels=labels
            )
            (out.loss / cfg.grad_accum_steps).backward()
            tokens += inputs.numel()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.max_grad_norm)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        dt = time.perf_counter() - t0
        self.used_s += dt
        self.steps += 1
        return tokens, dt


# ----------------------------------------------------------------------------------------------
# Measurements


def throughput(env: SimpleNamespace, steps: int, warmup: int, workdir: Path) -> dict[str, Any]:
    systems = [Ours(env, workdir / "tp", None), HFLoop(env, None)]
    for s in systems:
        for _ in range(warmup):
            s.step()
    tokens = {s.name: 0 for s in systems}
    seconds = {s.name: 0.0 for s in systems}
    for _ in range(steps):  # interleaved: one step each, in turn
        for s in systems:
            n, dt = s.step()
            tokens[s.name] += n
            seconds[s.name] += dt
    out = {name: tokens[name] / seconds[name] for name in tokens}
    out["ratio"] = out["ours"] / out["transformers"]
    out["steps"] = steps
    return out


def throughput_ddp(args: argparse.Namespace, steps: int, workdir: Path) -> float:
    """Our trainer under torchrun, 2 processes x 1 thread: tokens/s after the first window."""
    out = workdir / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    cmd += ["-m", "training.pretrain.cli", "--config", str(args.config), "--output-dir", str(out)]
    cmd += ["--corpus", *[str(f) for f in TRAIN_FILES], "--max-steps", str(steps + 2)]
    cmd += ["--vocab", str(args.env.tok_dir), "--cache_dir", str(CACHE), "--log_every", "2"]
    cmd += ["--save_every", "0", "--eval_every", "0", "--precision", "fp32", "--plot", "false"]
    cmd += ["--tensorboard", "false", "--progress_bar", "false", "--log-level", "WARNING"]
    # Half the micro-batch per process: the same rows per optimizer step as one process.
    cfg = args.env.cfg
    if cfg.batch_size % 2:
        raise SystemExit("--ddp needs an even batch size")
    cmd += [
        "--batch_size",
        str(cfg.batch_size // 2),
        "--grad_accum_steps",
        str(cfg.grad_accum_steps),
    ]
    for k, v in args.set or []:
        if k.split(".")[-1] not in ("batch_size", "grad_accum_steps"):
            cmd += [f"--{k}", v]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    subprocess.run(cmd, cwd=ROOT, env=env, check=True)
    from training.run.metrics import read_metrics

    records = [r for r in read_metrics(out / "metrics.jsonl") if "tokens_per_s" in r][1:]
    return float(np.mean([r["tokens_per_s"] for r in records]))


def quality(
    env: SimpleNamespace, budget_s: float, slice_s: float, eval_rows: int, workdir: Path
) -> dict[str, Any]:
    from training.evaluation.mlm import evaluate_mlm

    ours, hf = Ours(env, workdir / "q", budget_s), HFLoop(env, budget_s)
    t_start = time.perf_counter()
    while ours.used_s < budget_s or hf.used_s < budget_s:
        for s in (ours, hf):
            end = min(s.used_s + slice_s, budget_s)
            while s.used_s < end:
                s.step()
        done = min(ours.used_s, hf.used_s) / budget_s
        print(
            f"\r  quality: {100 * done:5.1f}% of the budget "
            f"(ours {ours.steps} steps, transformers {hf.steps} steps)",
            end="",
            file=sys.stderr,
            flush=True,
        )
    print(file=sys.stderr)
    results: dict[str, Any] = {"budget_s": budget_s, "wall_s": time.perf_counter() - t_start}
    for s, model in ((ours, ours.model), (hf, _HFAdapter(hf.model))):
        metrics = evaluate_mlm(
            model,
            env.valid,
            ours.trainer.batches.spec,
            batch_size=64,
            max_rows=eval_rows,
            seed=env.cfg.eval_seed,
        )
        results[s.name] = {**metrics, "steps": s.steps, "train_s": s.used_s}
    results["accuracy_points"] = 100 * (
        results["ours"]["accuracy"] - results["transformers"]["accuracy"]
    )
    return results


def markdown(report: dict[str, Any]) -> str:
    """Both systems side by side: throughput, then what each learned in the same budget."""
    tp = report["throughput"]
    rows = [
        [
            f"training tokens/s (fp32, {tp['steps']} interleaved steps)",
            f"{tp['ours']:,.0f}",
            f"{tp['transformers']:,.0f}",
            ratio(tp["ratio"]),
        ]
    ]
    if "ddp_tokens_per_s" in report:
        d = report["ddp_tokens_per_s"]
        rows.append(
            [
                "tokens/s, ours under torchrun 2 x 1 thread",
                f"{d:,.0f}",
                f"{tp['transformers']:,.0f}",
                ratio(d / tp["transformers"]),
            ]
        )
    q = report.get("quality")
    if q:
        o, h = q["ours"], q["transformers"]
        rows += [
            [f"steps in {q['budget_s'] / 60:.1f} min", o["steps"], h["steps"], ""],
            [
                "valid masked-token accuracy",
                f"{100 * o['accuracy']:.2f}%",
                f"{100 * h['accuracy']:.2f}%",
                f"{q['accuracy_points']:+.2f} points",
            ],
            [
                "valid MLM loss (perplexity)",
                f"{o['loss']:.3f} ({o['perplexity']:.0f})",
                f"{h['loss']:.3f} ({h['perplexity']:.0f})",
                "",
            ],
        ]
    caption = (
        f"### MLM training, {report['config']} ({report['shape']}), {report['threads']} threads, "
        f"batch {report['rows_per_step']} x {report['seq_len']} tokens"
    )
    header = ["measure", "ours", "transformers loop", "ours / transformers"]
    return "\n".join([caption, "", *table_lines(header, rows, "lrrr")])


def main(argv: list[str] | None = None) -> int:
    parser = bench_parser("bench_train", __doc__, quick="few steps, a 1-minute budget", threads=2)
    parser.add_argument("--config", type=Path, default=ROOT / "configs" / "bert_mini.yaml")
    parser.add_argument("--budget-minutes", type=float, default=None, help="default 10 (quick: 1)")
    parser.add_argument("--steps", type=int, default=None, help="timed steps (default 12, quick 4)")
    parser.add_argument("--batch-size", type=int, default=None, help="override the config's")
    parser.add_argument("--accum", type=int, default=None, help="override the config's")
    parser.add_argument("--eval-rows", type=int, default=None, help="default 1024 (quick: 256)")
    parser.add_argument("--ddp", action="store_true", help="also time ours under torchrun 2x1")
    parser.add_argument("--skip-quality", action="store_true")
    parser.add_argument(
        "--set", nargs=2, action="append", metavar=("KEY", "VALUE"), help="config override"
    )
    args = parser.parse_args(argv)
    setup_logging()
    torch.set_num_threads(args.threads)
    budget = 60 * (args.budget_minutes or (1.0 if args.quick else 10.0))
    steps = args.steps or (4 if args.quick else 12)
    eval_rows = args.eval_rows or (256 if args.quick else 1024)

    env = prepare(args)
    args.env = env
    mc, cfg = env.model_config, env.cfg
    cpu = cpu_report()
    report: dict[str, Any] = {
        "config": args.config.name,
        "shape": f"L{mc.num_hidden_layers} H{mc.hidden_size} A{mc.num_attention_heads} "
        f"I{mc.intermediate_size} V{mc.vocab_size}",
        "threads": args.threads,
        "rows_per_step": cfg.batch_size * cfg.grad_accum_steps,
        "seq_len": cfg.max_seq_length,
        "quick": args.quick,
        "machine": {"cpu_count": cpu.cpus, "platform": cpu.platform},
        "torch": str(torch.__version__),
    }
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        log.info("throughput: %d steps each, interleaved ...", steps)
        report["throughput"] = throughput(env, steps, warmup=1, workdir=work)
        if args.ddp:
            log.info("throughput under torchrun (2 x 1 thread) ...")
            report["ddp_tokens_per_s"] = throughput_ddp(args, steps, work)
        if not args.skip_quality:
            log.info("quality: %.1f min of training each ...", budget / 60)
            report["quality"] = quality(env, budget, slice_s=5.0, eval_rows=eval_rows, workdir=work)
    table = markdown(report)
    print(table)
    report["markdown"] = table
    write_results(args.out, report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
