"""Fine-tuning on WordNet supersenses: ours against TF-IDF + logistic regression, transformers'
`Trainer` and a randomly initialised model, all on the valid split, in one run.

    python -m bench.bench_finetune [--quick] [--budget-min 10] [--checkpoint DIR]

Task: data/wordnet-supersense.{train,valid}.tsv (45 lexicographer-file labels, very unbalanced).
Systems, each scored by accuracy and macro-F1 on the whole valid file:

* TF-IDF + logistic regression (scikit-learn): word 1-2-grams, sublinear tf, min_df=2, C=10;
* `transformers` `Trainer` (the peer pipeline) fine-tuning the same checkpoint with the same
  recipe (configs/finetune_supersense.yaml: lr, batch, warmup, weight decay, max length, class
  weights through `compute_loss`) for the same wall-clock budget; its linear schedule is laid
  over the budget from its measured step rate, and its best evaluation (same evaluation points)
  is reported, as ours is;
* ours (`bert-finetune`'s loop) from the checkpoint, and from a random initialisation of the same
  shape and tokenizer (the value of pretraining).
Training throughput is examples per second spent inside training steps (evaluations left out),
over each budgeted run; the peer's schedule length comes from a 100-step calibration of its step
rate and of its evaluation time. Both read the checkpoint's own vocabulary (the peer through
`BertTokenizerFast.from_pretrained`, checked to give our token ids).

Results: a markdown table on stdout and bench/results/bench_finetune.json, with the CPU flags.
The acceptance lines are issue 16's: above TF-IDF (goal +5 points macro-F1), above the random
init, at least the peer's figures at >= 1.5x its training throughput. Deliberately not measured:
serving speed (bench_serve), and test-split figures (the test split is not distributed).
"""

from __future__ import annotations

import logging
import math
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.common import (
    DEFAULT_CHECKPOINT,
    ROOT,
    SUPERSENSE_TRAIN,
    SUPERSENSE_VALID,
    bench_parser,
    cpu_report,
    ratio,
    setup_logging,
    supersense_sample,
    table_lines,
    write_results,
)

log = logging.getLogger(__name__)
RECIPE = ROOT / "configs" / "finetune_supersense.yaml"
CALIBRATION_STEPS = 100
WARMUP_STEPS = 10


def tfidf_baseline(train: Path, valid: Path) -> dict[str, Any]:
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    from training.data.labelled import LabelSet, read_labelled
    from training.evaluation.classification import classification_metrics

    tr, va = read_labelled(train), read_labelled(valid)
    labels = LabelSet.from_examples(tr)
    t0 = time.perf_counter()
    vec = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, min_df=2)
    x = vec.fit_transform([e.text for e in tr])
    clf = LogisticRegression(C=10, max_iter=1000).fit(x, labels.ids(tr, str(train)))
    fit_s = time.perf_counter() - t0
    pred = clf.predict(vec.transform([e.text for e in va]))
    m = classification_metrics(labels.ids(va, str(valid)), pred, labels.names)
    return {"accuracy": m["accuracy"], "macro_f1": m["macro_f1"], "train_s": fit_s}


def ours(
    checkpoint: Path, train: Path, valid: Path, cfg: Any, out: Path
) -> tuple[dict[str, Any], Any]:
    from training.finetune.tuner import FineTuner

    tuner = FineTuner(
        cfg, checkpoint=checkpoint, train_file=train, valid_file=valid, output_dir=out
    )
    t0 = time.perf_counter()
    result = tuner.train()
    row = {
        "accuracy": result.best["accuracy"],
        "macro_f1": result.best["macro_f1"],
        "best_step": result.best["step"],
        "steps": result.step,
        "train_s": time.perf_counter() - t0,
        "examples_per_s": result.examples_per_s,  # inside training steps (batches built too)
    }
    return row, tuner


def random_init_checkpoint(checkpoint: Path, directory: Path) -> Path:
    """A model of the checkpoint's shape and tokenizer with BERT's random initialisation."""
    from model import BertForMaskedLM
    from tokenization import WordPieceTokenizer

    trained = BertForMaskedLM.from_pretrained(checkpoint)
    torch.manual_seed(0)
    BertForMaskedLM(trained.config).save_pretrained(directory)
    WordPieceTokenizer.from_pretrained(checkpoint).save_pretrained(directory)
    return directory


class _Peer:
    """transformers' Trainer on the same checkpoint, data and recipe."""

    def __init__(self, checkpoint: Path, train: Path, valid: Path, cfg: Any, threads: int) -> None:
        import transformers

        from tokenization import WordPieceTokenizer
        from training.data.labelled import LabelSet, class_weights, read_labelled

        self.tf = transformers
        self.cfg = cfg
        tr, va = read_labelled(train), read_labelled(valid)
        self.labels = LabelSet.from_examples(tr)
        self.tok = transformers.BertTokenizerFast.from_pretrained(str(checkpoint))
        own = WordPieceTokenizer.from_pretrained(checkpoint)
        assert len(self.tok) == own.vocab_size, (len(self.tok), own.vocab_size)
        for e in tr[:200]:  # the peer must read the very same token ids
            assert self.tok(e.text)["input_ids"] == own.encode(e.text).ids, e.text
        self.train_ds = self._dataset(tr, self.labels.ids(tr, str(train)))
        self.valid_ds = self._dataset(va, self.labels.ids(va, str(valid)))
        w = class_weights(
            self.labels.ids(tr, str(train)), len(self.labels.names), cfg.class_weighting
        )
        self.weights = None if w is None else torch.from_numpy(w)
        self.checkpoint = checkpoint
        self.threads = threads

    def _dataset(self, examples: list, ids: np.ndarray) -> list[dict[str, Any]]:
        enc = self.tok([e.text for e in examples], truncation=True, max_length=self.cfg.max_length)
        return [
            {
                "input_ids": enc["input_ids"][i],
                "attention_mask": enc["attention_mask"][i],
                "labels": int(ids[i]),
            }
            for i in range(len(examples))
        ]

    def model(self) -> Any:
        names = self.labels.names
        return self.tf.AutoModelForSequenceClassification.from_pretrained(
            str(self.checkpoint),
            num_labels=len(names),
            id2label=dict(enumerate(names)),
            label2id={n: i for i, n in enumerate(names)},
        )

    def trainer(
        self, out: Path, max_steps: int, eval_steps: int | None, budget_s: float | None
    ) -> Any:
        tf, cfg, weights = self.tf, self.cfg, self.weights
        from training.evaluation.classification import classification_metrics

        names = self.labels.names

        def metrics(p: Any) -> dict[str, float]:
            m = classification_metrics(p.label_ids, np.argmax(p.predictions, axis=1), names)
            return {"accuracy": m["accuracy"], "macro_f1": m["macro_f1"]}

        class Weighted(tf.Trainer):
            def compute_loss(self, model, inputs, return_outputs=False, **kwargs):
                labels = inputs.pop("labels")
                out = model(**inputs)
                w = None if weights is None else weights.to(out.logits.device)
                loss = torch.nn.functional.cross_entropy(out.logits.float(), labels, weight=w)
                return (loss, out) if return_outputs else loss

        class Budget(tf.TrainerCallback):
            """Stops at the wall-clock budget; times the training steps (not evaluations)."""

            def __init__(self) -> None:
                self.start = time.perf_counter()
                self.step_s, self.steps, self._t = 0.0, 0, 0.0

            def on_step_begin(self, args, state, control, **kwargs):
                self._t = time.perf_counter()

            def on_step_end(self, args, state, control, **kwargs):
                if state.global_step > WARMUP_STEPS:  # the first steps warm up allocators
                    self.step_s += time.perf_counter() - self._t
                    self.steps += 1
                if budget_s is not None and time.perf_counter() - self.start > budget_s:
                    control.should_training_stop = True

        args = tf.TrainingArguments(
            output_dir=str(out),
            per_device_train_batch_size=cfg.batch_size,
            per_device_eval_batch_size=cfg.eval_batch_size,
            learning_rate=cfg.lr,
            weight_decay=cfg.weight_decay,
            adam_beta1=cfg.adam_beta1,
            adam_beta2=cfg.adam_beta2,
            adam_epsilon=cfg.adam_eps,
            max_grad_norm=cfg.max_grad_norm,
            warmup_steps=round(cfg.warmup_fraction * max_steps),
            lr_scheduler_type="linear",
            max_steps=max_steps,
            eval_strategy="steps" if eval_steps else "no",
            eval_steps=eval_steps,
            save_strategy="no",
            logging_steps=50,
            report_to="none",
            use_cpu=not torch.cuda.is_available(),
            dataloader_num_workers=0,
            seed=cfg.seed,
            disable_tqdm=True,
        )
        self.clock = Budget()
        return Weighted(
            model=self.model(),
            args=args,
            train_dataset=self.train_ds,
            eval_dataset=self.valid_ds,
            data_collator=tf.DataCollatorWithPadding(self.tok),
            compute_metrics=metrics,
            callbacks=[self.clock],
        )

    def calibrate(self, out: Path) -> tuple[float, float]:
        """(training steps per second, seconds per evaluation) of this pipeline, from
        CALIBRATION_STEPS steps after a warm-up, so that its schedule can be laid over the budget
        (transformers' Trainer has no time-based schedule)."""
        trainer = self.trainer(out, CALIBRATION_STEPS + WARMUP_STEPS, None, None)
        trainer.train()
        t0 = time.perf_counter()
        trainer.evaluate()
        eval_s = time.perf_counter() - t0
        return self.clock.steps / self.clock.step_s, eval_s

    def run(
        self, out: Path, budget_s: float, steps_per_s: float, eval_s: float, eval_every: int
    ) -> dict[str, Any]:
        # The steps that fit in the budget once its evaluations are paid for, so that the linear
        # decay ends at the budget, as ours does.
        evals = budget_s * steps_per_s / eval_every
        max_steps = max(1, int(steps_per_s * max(budget_s - evals * eval_s, 0.5 * budget_s)))
        trainer = self.trainer(out, max_steps, eval_every, budget_s)
        t0 = time.perf_counter()
        trainer.train()
        train_s = time.perf_counter() - t0
        history = [h for h in trainer.state.log_history if "eval_macro_f1" in h]
        final = trainer.evaluate()
        history.append({**final, "step": trainer.state.global_step})
        best = max(history, key=lambda h: h["eval_macro_f1"])
        return {
            "accuracy": best["eval_accuracy"],
            "macro_f1": best["eval_macro_f1"],
            "best_step": best["step"],
            "steps": trainer.state.global_step,
            "planned_steps": max_steps,
            "train_s": train_s,
            "examples_per_s": self.clock.steps * self.cfg.batch_size / self.clock.step_s,
        }


def main(argv: list[str] | None = None) -> int:
    ap = bench_parser(
        "bench_finetune", __doc__, quick="~4,000 training rows, 1-minute budgets", threads=0
    )
    ap.add_argument("--checkpoint", type=Path, default=DEFAULT_CHECKPOINT)
    ap.add_argument("--config", type=Path, default=RECIPE, help="the recipe all share")
    ap.add_argument("--budget-min", type=float, default=10.0, help="wall clock per fine-tune")
    ap.add_argument("--skip", nargs="*", default=[], choices=("tfidf", "peer", "random"))
    args = ap.parse_args(argv)
    setup_logging()
    if args.threads:
        torch.set_num_threads(args.threads)
    from training.finetune.config import load_finetune_config

    budget = 1.0 if args.quick else args.budget_min
    cfg = load_finetune_config(
        args.config,
        {
            "time_budget_minutes": budget,
            "progress_bar": False,
            "tensorboard": False,
            "plot": False,
            "num_threads": args.threads,
        },
    )
    work = Path(tempfile.mkdtemp(prefix="bench_finetune-"))
    train, valid = supersense_sample(work) if args.quick else (SUPERSENSE_TRAIN, SUPERSENSE_VALID)
    cpu = cpu_report()
    results: dict[str, Any] = {
        "cpu": cpu.machine,
        "cpu_flags": cpu.summary,
        "threads": torch.get_num_threads(),
        "budget_min": budget,
        "quick": args.quick,
        "checkpoint": str(args.checkpoint),
        "recipe": cfg.to_dict(),
        "systems": {},
    }
    systems = results["systems"]
    log.info("ours, %s min ...", budget)
    systems["ours"], tuner = ours(args.checkpoint, train, valid, cfg, work / "ours")
    eval_every = tuner.eval_every
    if "peer" not in args.skip:
        log.info("transformers Trainer: calibration, then the same budget ...")
        peer = _Peer(args.checkpoint, train, valid, cfg, args.threads)
        rate, eval_s = peer.calibrate(work / "peer-calibration")
        results["peer_calibration"] = {"steps_per_s": rate, "eval_s": eval_s}
        systems["transformers_trainer"] = peer.run(
            work / "peer", budget * 60, rate, eval_s, eval_every
        )
    if "random" not in args.skip:
        log.info("ours from a random initialisation, %s min ...", budget)
        rand = random_init_checkpoint(args.checkpoint, work / "random-init")
        systems["ours_random_init"], _ = ours(rand, train, valid, cfg, work / "random")
    if "tfidf" not in args.skip:  # last: minutes of single-threaded fitting
        log.info("TF-IDF + logistic regression ...")
        systems["tfidf_logreg"] = tfidf_baseline(train, valid)

    print(report(results))
    write_results(args.out, results)
    return 0


def report(results: dict[str, Any]) -> str:
    """The systems side by side, then ours against each of them."""
    s = results["systems"]
    caption = (
        f"WordNet supersense, valid split; {results['budget_min']} min per fine-tune; "
        f"CPU flags: {results['cpu_flags']}; {results['threads']} threads"
    )
    rows = [
        [
            name,
            f"{r['accuracy']:.4f}",
            f"{r['macro_f1']:.4f}",
            f"{r['train_s']:.0f}",
            r.get("steps", "-"),
        ]
        for name, r in s.items()
    ]
    header = ["system", "accuracy", "macro-F1", "train s", "steps"]
    lines = [caption, "", *table_lines(header, rows)]
    o = s["ours"]
    lines.append("")
    for name in ("tfidf_logreg", "transformers_trainer", "ours_random_init"):
        if name in s:
            r = s[name]
            lines.append(
                f"ours vs {name}: accuracy {ratio(o['accuracy'] / r['accuracy'], 3)} "
                f"({100 * (o['accuracy'] - r['accuracy']):+.1f} pts), macro-F1 "
                f"{ratio(o['macro_f1'] / r['macro_f1'], 3)} "
                f"({100 * (o['macro_f1'] - r['macro_f1']):+.1f} pts)"
            )
    if "transformers_trainer" in s:
        ours_rate, peer_rate = o["examples_per_s"], s["transformers_trainer"]["examples_per_s"]
        lines.append(
            f"training throughput (examples per second inside training steps, over the budgeted "
            f"runs): ours {ours_rate:.0f} vs transformers {peer_rate:.0f} = "
            f"{ours_rate / peer_rate:.2f}x (target >= 1.5x)"
        )
    if not math.isfinite(o["macro_f1"]):
        lines.append("ours: no finite macro-F1")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
