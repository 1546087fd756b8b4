"""Fine-tuning (`bert-finetune`): labelled files, the loop's output in transformers, exact resume,
a stop request and the non-finite guard (the shared loop's), the classification metrics, and
`bert-eval --task classify`."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from train_testing import DATA, FINETUNE_QUICK, REPO, TINY_MODEL, tiny_tokenizer

import model.bert
from model import BertConfig, BertForMaskedLM
from training.data.labelled import LabelledDataError, LabelSet, class_weights, read_labelled
from training.evaluation.classification import classification_metrics
from training.finetune.cli import main as finetune_main
from training.finetune.config import FinetuneConfig, load_finetune_config
from training.finetune.tuner import FineTuner
from training.run.checkpointing import CheckpointManager
from training.run.loop import NonFiniteLossError
from training.run.metrics import read_metrics
from training.run.options import TrainConfigError

QUICK = FINETUNE_QUICK


def _pretrained(directory: Path, position: str = "rotary") -> Path:
    """A random tiny encoder with an MLM head and the tiny tokenizer: a stand-in pretrained model."""
    tok = tiny_tokenizer()
    config = BertConfig(vocab_size=tok.vocab_size, position_embedding_type=position, **TINY_MODEL)
    torch.manual_seed(0)
    BertForMaskedLM(config).save_pretrained(directory)
    tok.save_pretrained(directory)
    return directory


def _labelled(tmp: Path) -> tuple[Path, Path]:
    """The first 160 supersense lines as training data and the next 40 (labels seen in training)
    as validation data, as TSV."""
    lines = (DATA / "wordnet-supersense.train.tsv").read_text(encoding="utf-8").splitlines()
    header, rows = lines[0], lines[1:201]
    train_rows, valid_rows = rows[:160], rows[160:]
    seen = {r.split("\t")[0] for r in train_rows}
    valid_rows = [r for r in valid_rows if r.split("\t")[0] in seen]
    train, valid = tmp / "train.tsv", tmp / "valid.tsv"
    train.write_text("\n".join([header, *train_rows]) + "\n", encoding="utf-8")
    valid.write_text("\n".join([header, *valid_rows]) + "\n", encoding="utf-8")
    return train, valid


def _tuner(tmp: Path, out: Path, position: str = "rotary", **cfg) -> FineTuner:
    ckpt = tmp / f"pretrained-{position}"
    if not ckpt.exists():
        _pretrained(ckpt, position)
    train, valid = (tmp / "train.tsv", tmp / "valid.tsv")
    if not train.exists():
        _labelled(tmp)
    return FineTuner(
        FinetuneConfig(**{**QUICK, **cfg}),
        checkpoint=ckpt,
        train_file=train,
        valid_file=valid,
        output_dir=out,
    )


@pytest.mark.parametrize("position", ["rotary", "absolute"])
def test_finetuned_classifier_opens_in_transformers_with_equal_logits(tmp_path, position):
    transformers = pytest.importorskip("transformers")
    tuner = _tuner(tmp_path, tmp_path / "out", position, max_steps=12, eval_every=6)
    result = tuner.train()
    assert result.finished and result.step == 12
    best = result.best_dir
    assert best is not None and (best / "eval.json").is_file()
    assert 0.0 <= result.best["macro_f1"] <= 1.0

    ours = BertForMaskedLM.from_pretrained(best)
    hf = transformers.AutoModelForSequenceClassification.from_pretrained(best).eval()
    family = "RoFormer" if position == "rotary" else "Bert"
    assert type(hf).__name__ == f"{family}ForSequenceClassification"
    assert [hf.config.id2label[i] for i in range(hf.config.num_labels)] == list(ours.config.labels)
    assert ours.config.labels == tuner.labels.names
    tok = tiny_tokenizer()
    enc = tok.encode_batch(["a dog: a domestic animal", "to run fast (on foot)"])
    ids = torch.tensor([e.ids for e in enc])
    mask = torch.tensor([e.attention_mask for e in enc])
    with torch.no_grad():
        a = ours.classify(ids, mask).logits
        b = hf(input_ids=ids, attention_mask=mask).logits
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    # The weights at best/ are the ones that scored best/eval.json.
    saved = json.loads((best / "eval.json").read_text())
    assert saved["macro_f1"] == pytest.approx(result.best["macro_f1"])


def test_resume_continues_bit_for_bit(tmp_path):
    straight = _tuner(tmp_path, tmp_path / "a", max_steps=16, eval_every=8)
    straight.train()
    first = _tuner(tmp_path, tmp_path / "b", max_steps=16, eval_every=8)
    first.train(stop_after=8)
    with pytest.raises(TrainConfigError, match="--resume"):
        _tuner(tmp_path, tmp_path / "b", max_steps=16, eval_every=8).train()
    second = _tuner(tmp_path, tmp_path / "b", max_steps=16, eval_every=8)
    result = second.train(resume=True)
    assert result.step == 16
    for (name, p), q in zip(
        straight.model.state_dict().items(), second.model.state_dict().values(), strict=True
    ):
        assert torch.equal(p, q), name
    assert straight.best == second.best


def test_sigterm_saves_a_resumable_checkpoint_and_the_resume_is_exact(tmp_path, monkeypatch):
    straight = _tuner(tmp_path, tmp_path / "a", max_steps=8, eval_every=6)
    straight.train()

    real = FineTuner.forward_backward

    def forward_backward(self, *args, **kwargs):
        if self.step == 1:  # SIGTERM in the middle of the second step
            signal.raise_signal(signal.SIGTERM)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(FineTuner, "forward_backward", forward_backward)
    handler = signal.getsignal(signal.SIGTERM)
    stopped = _tuner(tmp_path, tmp_path / "b", max_steps=8, eval_every=6).train()
    assert signal.getsignal(signal.SIGTERM) is handler  # the loop's handler is gone again
    # The request is seen at the next step boundary: that step runs, is saved, the run exits.
    assert not stopped.finished and stopped.step == 3
    latest = CheckpointManager(tmp_path / "b", writer=False).latest()
    assert latest is not None and latest.name == "checkpoint-000003"
    assert not (latest / "eval.json").exists()  # saved, not evaluated: a quick exit

    monkeypatch.setattr(FineTuner, "forward_backward", real)
    resumed = _tuner(tmp_path, tmp_path / "b", max_steps=8, eval_every=6)
    assert resumed.train(resume=True).finished and resumed.step == 8
    for (name, p), q in zip(
        straight.model.state_dict().items(), resumed.model.state_dict().values(), strict=True
    ):
        assert torch.equal(p, q), name
    assert straight.best == resumed.best


def _nan_classify_on(monkeypatch, bad_calls):
    """A NaN loss on the given training calls of `classify` (0-based; evaluation calls are
    not counted)."""
    real = model.bert.BertForMaskedLM.classify
    calls = {"n": 0}

    def classify(self, *args, **kwargs):
        out = real(self, *args, **kwargs)
        if self.training:
            if calls["n"] in bad_calls:
                out.loss = out.loss * float("nan")
            calls["n"] += 1
        return out

    monkeypatch.setattr(model.bert.BertForMaskedLM, "classify", classify)


def test_non_finite_steps_are_skipped_and_too_many_in_a_row_abort(tmp_path, monkeypatch):
    _nan_classify_on(monkeypatch, {2})  # one bad step: skipped, counted, the run goes on
    result = _tuner(tmp_path, tmp_path / "one", max_steps=6, eval_every=3).train()
    assert result.finished and result.step == 6
    records = read_metrics(tmp_path / "one" / "metrics.jsonl")
    assert [r["skipped_steps"] for r in records if "train_loss" in r] == [0, 1, 1]  # the 3rd
    best = BertForMaskedLM.from_pretrained(tmp_path / "one" / "best")
    assert all(torch.isfinite(p).all() for p in best.parameters())

    _nan_classify_on(monkeypatch, set(range(4, 100)))  # from the fifth step on: diverged
    tuner = _tuner(
        tmp_path, tmp_path / "many", max_steps=20, eval_every=2, max_consecutive_nonfinite=3
    )
    with pytest.raises(NonFiniteLossError, match="3 consecutive steps had a non-finite loss"):
        tuner.train()
    # Steps 5 and 6 were skipped (checkpoint 6 holds the weights of step 4), step 7 aborted.
    latest = CheckpointManager(tmp_path / "many", writer=False).latest()
    assert latest.name == "checkpoint-000006"
    assert all(
        torch.isfinite(p).all() for p in BertForMaskedLM.from_pretrained(latest).parameters()
    )


def test_cli_reports_a_diverged_run_with_exit_status_3(tmp_path, monkeypatch, capsys):
    ckpt = _pretrained(tmp_path / "pre")
    train, valid = _labelled(tmp_path)
    _nan_classify_on(monkeypatch, set(range(100)))
    argv = ["--checkpoint", str(ckpt), "--output-dir", str(tmp_path / "o")]
    argv += ["--train", str(train), "--valid", str(valid)]
    argv += ["--max-steps", "10", "--batch-size", "8", "--num-threads", "1", "--log-level", "ERROR"]
    for setting in ("progress_bar=false", "tensorboard=false", "plot=false",
                    "max_consecutive_nonfinite=2", "precision=fp32", "device=cpu"):  # fmt: skip
        argv += ["--set", setting]
    assert finetune_main(argv) == 3
    err = capsys.readouterr().err
    assert "bert-finetune: training diverged: 2 consecutive steps" in err
    assert "finetune.lr" in err


def test_class_weighting_changes_the_loss_and_balanced_weights_follow_the_formula():
    labels = np.array([0, 0, 0, 1])
    w = class_weights(labels, 3, "balanced")
    # n / (C * count), then scaled so the mean weight over examples is 1.
    raw = np.array([4 / (3 * 3), 4 / (3 * 1), 0.0])
    np.testing.assert_allclose(w, raw / raw[labels].mean(), rtol=1e-6)
    assert class_weights(labels, 3, "none") is None
    sq = class_weights(labels, 3, "sqrt")
    assert sq[1] / sq[0] == pytest.approx(np.sqrt(3), rel=1e-6)
    with pytest.raises(LabelledDataError, match="class weighting"):
        class_weights(labels, 3, "inverse")


def test_metrics_equal_scikit_learn():
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(0)
    gold = rng.integers(0, 6, 300)
    pred = np.where(rng.random(300) < 0.6, gold, rng.integers(0, 7, 300))  # 6: never gold
    m = classification_metrics(gold, pred, [f"c{i}" for i in range(8)])
    assert m["accuracy"] == pytest.approx(sklearn_metrics.accuracy_score(gold, pred))
    assert m["macro_f1"] == pytest.approx(sklearn_metrics.f1_score(gold, pred, average="macro"))
    assert {r["label"] for r in m["per_class"]} == {f"c{i}" for i in range(7)}  # c7: absent


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("a.tsv", "text\tclass\nhello\tx\n", "must name a 'label' and a 'text'"),
        ("b.tsv", "label\ttext\nx\t \n", r"b.tsv:2: empty text"),
        ("c.jsonl", '{"label": "x", "text": "hi"}\nnot json\n', r"c.jsonl:2: invalid JSON"),
        ("d.jsonl", '{"label": true, "text": "hi"}\n', "label must be a string or an integer"),
        ("e.txt", "label\ttext\n", "unknown format"),
        ("f.csv", "label,text\n", "no examples"),
        ("g.csv", "label,text\nx\n", r"g.csv:2: 1 field"),
    ],
)
def test_bad_labelled_files_name_the_file_and_line(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    with pytest.raises(LabelledDataError, match=message):
        read_labelled(path)


def test_formats_read_alike_and_unknown_valid_labels_are_refused(tmp_path):
    (tmp_path / "a.csv").write_text('label,text\nx,"hello, world"\ny,bye\n', encoding="utf-8")
    (tmp_path / "a.jsonl").write_text(
        '{"label": "x", "text": "hello, world"}\n{"label": "y", "text": "bye"}\n', encoding="utf-8"
    )
    (tmp_path / "a.tsv").write_text("text\tlabel\nhello, world\tx\nbye\ty\n", encoding="utf-8")
    got = [read_labelled(tmp_path / f"a.{ext}") for ext in ("csv", "jsonl", "tsv")]
    assert got[0] == got[1] == got[2]
    labels = LabelSet.from_examples(got[0])
    assert labels.names == ("x", "y")
    (tmp_path / "v.tsv").write_text("label\ttext\nz\tsomething\n", encoding="utf-8")
    with pytest.raises(LabelledDataError, match="'z' do not occur in the training file"):
        labels.ids(read_labelled(tmp_path / "v.tsv"), "v.tsv")


def test_config_refuses_unknown_keys_and_bad_values(tmp_path):
    with pytest.raises(TrainConfigError, match="unknown finetune setting"):
        load_finetune_config(None, {"learning_rate": 1e-3})
    with pytest.raises(TrainConfigError, match="class_weighting"):
        FinetuneConfig(class_weighting="inverse")
    with pytest.raises(TrainConfigError, match="needs a length"):
        FinetuneConfig(epochs=None)
    recipe = tmp_path / "r.yaml"
    recipe.write_text("finetune:\n  lr: 3e-4\n  epochs: 2\n", encoding="utf-8")
    cfg = load_finetune_config(recipe, {"epochs": "5", "batch_size": None})
    assert (cfg.lr, cfg.epochs, cfg.batch_size) == (3e-4, 5.0, 32)


def _cli(module: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.slow  # ~17 s of subprocesses; the library paths above cover training and resume
def test_cli_trains_and_bert_eval_classify_reports_the_same_figures(tmp_path):
    ckpt = _pretrained(tmp_path / "pre")
    train, valid = _labelled(tmp_path)
    out = tmp_path / "run"
    proc = _cli(
        "training.finetune.cli",
        *("--checkpoint", str(ckpt), "--train", str(train), "--valid", str(valid)),
        *("--output-dir", str(out), "--max-steps", "6", "--batch-size", "8", "--lr", "2e-3"),
        *("--set", "progress_bar=false", "--set", "tensorboard=false", "--num-threads", "1"),
        "--log-level",
        "WARNING",
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = json.loads(proc.stdout)
    assert summary["best_checkpoint"] == str(out / "best")
    assert (out / "curves.png").is_file() and (out / "metrics.jsonl").is_file()

    png = tmp_path / "confusion.png"
    proc = _cli(
        "training.evaluation.cli",
        *("--task", "classify", "--checkpoint", str(out / "best"), "--corpus", str(valid)),
        *("--confusion", str(png)),
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    metrics = json.loads(proc.stdout)
    assert metrics["macro_f1"] == pytest.approx(summary["best_valid"]["macro_f1"], abs=1e-9)
    assert metrics["accuracy"] == pytest.approx(summary["best_valid"]["accuracy"], abs=1e-9)
    assert "macro-F1" in proc.stderr and png.stat().st_size > 1000

    bad = _cli(
        "training.finetune.cli",
        *("--checkpoint", str(ckpt), "--train", str(train), "--valid", str(valid)),
        *("--output-dir", str(tmp_path / "x"), "--set", "warmup=0.1"),
    )
    assert bad.returncode == 2 and "unknown finetune setting" in bad.stderr
