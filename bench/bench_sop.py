"""Does sentence-order prediction help? MLM-only against MLM + SOP at an equal pretraining budget,
judged downstream (supersense fine-tuning) and by retrieval.

    python -m bench.bench_sop [--quick] [--pretrain-min 10] [--finetune-min 5]

Both arms continue pretraining the same checkpoint (default: checkpoints/default) with the same
recipe (configs/bert_tiny.yaml at lr 1e-3, a fresh optimizer) for the same wall clock, side by
side with one thread each so they share the machine alike; the SOP arm adds
`sop_weight * SOP` (training/sentence_order.py) through a fresh NSP head. Then both are
fine-tuned on WordNet supersenses with configs/finetune_supersense.yaml for the same budget, again
side by side, and scored on the valid split (the best checkpoint's accuracy and macro-F1);
retrieval recall@1 / MRR
comes from `bert-eval --task retrieval`'s code on data/wordnet.valid.txt. The SOP arm's
sentence-order accuracy on valid rows shows whether the objective was learned at all.

Results: a markdown table on stdout and bench/results/bench_sop.json. Deliberately not measured:
pretraining from scratch (a 2-hour run per arm) and NSP (the other `sentence_objective`).
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.common import (
    CACHE,
    DEFAULT_CHECKPOINT,
    ROOT,
    SUPERSENSE_TRAIN,
    SUPERSENSE_VALID,
    TRAIN_FILES,
    VALID_FILES,
    bench_parser,
    cpu_report,
    setup_logging,
    supersense_sample,
    table_lines,
    write_results,
)

log = logging.getLogger(__name__)


def side_by_side(commands: list[list[str]]) -> None:
    """Run the commands at once, one torch thread each, so they share the machine alike."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    procs = [subprocess.Popen(cmd, cwd=ROOT, env=env) for cmd in commands]
    for p in procs:
        if p.wait() != 0:
            raise SystemExit(f"failed: {' '.join(p.args)}")


def pretrain_command(name: str, sop_weight: float, base: Path, minutes: float, out: Path) -> list:
    cmd = [
        sys.executable,
        "-m",
        "training.pretrain.cli",
        "--config",
        str(ROOT / "configs/bert_tiny.yaml"),
    ]
    cmd += ["--corpus", *map(str, TRAIN_FILES), "--valid", *map(str, VALID_FILES)]
    cmd += ["--output-dir", str(out / name), "--time-budget", str(minutes)]
    cmd += ["--init_from", str(base), "--lr", "1e-3", "--warmup_fraction", "0.06"]
    cmd += ["--sop_weight", str(sop_weight), "--num_threads", "1", "--progress_bar", "false"]
    return [*cmd, "--eval_every", "0", "--save_every", "0", "--log-level", "WARNING"]


def finetune_command(checkpoint: Path, train: Path, valid: Path, minutes: float, out: Path) -> list:
    cmd = [sys.executable, "-m", "training.finetune.cli", "--checkpoint", str(checkpoint)]
    cmd += ["--train", str(train), "--valid", str(valid), "--output-dir", str(out)]
    cmd += ["--config", str(ROOT / "configs/finetune_supersense.yaml")]
    cmd += ["--time-budget", str(minutes), "--num-threads", "1", "--log-level", "WARNING"]
    return [*cmd, "--set", "progress_bar=false", "--set", "tensorboard=false"]


@torch.no_grad()
def sop_accuracy(checkpoint: Path, rows: int = 512) -> float:
    """Sentence-order accuracy of the NSP head on valid packed rows (half of them swapped)."""
    from model import BertForMaskedLM
    from tokenization import WordPieceTokenizer
    from training.data.corpus import PackedDataset, load_corpus
    from training.pretrain.sentence_order import make_pairs

    model = BertForMaskedLM.from_pretrained(checkpoint, nsp_head=True).eval()
    tok = WordPieceTokenizer.from_pretrained(checkpoint)
    corpora = load_corpus([str(f) for f in VALID_FILES], tok, cache_dir=str(CACHE))
    data = PackedDataset(corpora, seq_len=128, cls_id=tok.cls_token_id, sep_id=tok.sep_token_id)
    index = np.arange(min(rows, len(data)))
    ids, _ = data.rows(index)
    ids, types, labels = make_pairs(ids, np.random.default_rng(0), "sop", tok.sep_token_id)
    correct = 0
    for s in range(0, len(index), 64):
        batch = torch.from_numpy(ids[s : s + 64])
        cls_only = torch.zeros_like(batch, dtype=torch.bool)
        cls_only[:, 0] = True  # MLM logits at one position: the NSP head is what is asked
        out = model(
            batch, token_type_ids=torch.from_numpy(types[s : s + 64]), prediction_mask=cls_only
        )
        correct += int((out.nsp_logits.argmax(-1).numpy() == labels[s : s + 64]).sum())
    return correct / len(index)


def main(argv: list[str] | None = None) -> int:
    ap = bench_parser("bench_sop", __doc__, quick="1-minute pretraining and fine-tuning")
    ap.add_argument("--checkpoint", type=Path, default=DEFAULT_CHECKPOINT)
    ap.add_argument("--pretrain-min", type=float, default=10.0)
    ap.add_argument("--finetune-min", type=float, default=5.0)
    ap.add_argument("--sop-weight", type=float, default=1.0)
    args = ap.parse_args(argv)
    setup_logging()
    from training.evaluation.retrieval import evaluate_checkpoint_retrieval

    pre_min = 1.0 if args.quick else args.pretrain_min
    ft_min = 1.0 if args.quick else args.finetune_min
    work = Path(tempfile.mkdtemp(prefix="bench_sop-"))
    arms = {"mlm": 0.0, "mlm+sop": args.sop_weight}
    log.info("pretraining both arms for %s min, side by side ...", pre_min)
    side_by_side([pretrain_command(n, w, args.checkpoint, pre_min, work) for n, w in arms.items()])
    train, valid = supersense_sample(work) if args.quick else (SUPERSENSE_TRAIN, SUPERSENSE_VALID)
    log.info("fine-tuning both for %s min, side by side ...", ft_min)
    side_by_side(
        [finetune_command(work / n / "final", train, valid, ft_min, work / f"ft-{n}") for n in arms]
    )
    results: dict[str, Any] = {
        "cpu_flags": cpu_report().summary,
        "pretrain_min": pre_min,
        "finetune_min": ft_min,
        "sop_weight": args.sop_weight,
        "base": str(args.checkpoint),
        "arms": {},
    }
    for name in arms:
        final = work / name / "final"
        best = json.loads((work / f"ft-{name}" / "best" / "eval.json").read_text())
        ret = evaluate_checkpoint_retrieval(final, [str(VALID_FILES[0])])
        results["arms"][name] = {
            "finetune_accuracy": best["accuracy"],
            "finetune_macro_f1": best["macro_f1"],
            "retrieval_recall_at_1": ret["ours"]["recall@1"],
            "retrieval_mrr": ret["ours"]["mrr"],
            "sop_accuracy": sop_accuracy(final) if arms[name] > 0 else None,
        }
    print(report(results))
    write_results(args.out, results)
    return 0


def report(results: dict[str, Any]) -> str:
    """Both arms side by side, then the SOP arm's gains over MLM-only."""
    a = results["arms"]
    caption = (
        f"continued pretraining {results['pretrain_min']} min per arm (1 thread each, side by "
        f"side), fine-tuning {results['finetune_min']} min; CPU flags: {results['cpu_flags']}"
    )
    header = ["arm", "supersense accuracy", "macro-F1", "retrieval recall@1", "MRR", "SOP accuracy"]
    figures = ("finetune_accuracy", "finetune_macro_f1", "retrieval_recall_at_1", "retrieval_mrr")
    rows = [
        [
            name,
            *(f"{r[k]:.4f}" for k in figures),
            "-" if r["sop_accuracy"] is None else f"{r['sop_accuracy']:.3f}",
        ]
        for name, r in a.items()
    ]
    lines = [caption, "", *table_lines(header, rows)]
    m, s = a["mlm"], a["mlm+sop"]
    lines.append(
        f"\nSOP - MLM-only: macro-F1 {100 * (s['finetune_macro_f1'] - m['finetune_macro_f1']):+.1f} "
        f"pts, accuracy {100 * (s['finetune_accuracy'] - m['finetune_accuracy']):+.1f} pts, "
        f"recall@1 {s['retrieval_recall_at_1'] / m['retrieval_recall_at_1']:.3f}x"
    )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
