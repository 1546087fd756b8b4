"""The training loop end to end: servable output, exact resume, non-finite guard, budget mode."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import yaml
from train_testing import DATA, cli_args, write_corpus

import model.bert
from model import BertForMaskedLM
from tokenization import WordPieceTokenizer
from training.evaluation import cli as evaluate
from training.pretrain.cli import main
from training.run.checkpointing import CheckpointManager
from training.run.metrics import read_metrics


def params(directory) -> dict[str, torch.Tensor]:
    return dict(BertForMaskedLM.from_pretrained(directory).named_parameters())


def test_cli_run_learns_and_writes_a_servable_checkpoint(tmp_path, capsys):
    out = tmp_path / "run"
    extra = ["--max-steps", "30", "--save-every", "10", "--eval_every", "10"]
    extra += ["--plot", "true", "--tensorboard", "true"]
    assert main(cli_args(tmp_path, out, *extra)) == 0

    records = read_metrics(out / "metrics.jsonl")
    train = [r["train_loss"] for r in records if "train_loss" in r]
    valid = [r for r in records if "valid_loss" in r]
    assert len(train) == 15  # log_every 2
    assert np.mean(train[-3:]) < np.mean(train[:3]) - 0.3  # the loss falls
    assert [r["step"] for r in valid] == [10, 20, 30]
    assert valid[-1]["valid_loss"] < valid[0]["valid_loss"]
    assert all(0 <= r["valid_accuracy"] <= 1 for r in valid)
    assert math.isclose(valid[-1]["valid_perplexity"], math.exp(valid[-1]["valid_loss"]))

    final = out / "final"
    assert CheckpointManager(out, writer=False).latest() == final
    assert json.loads((out / "best.json").read_text())["name"] in {"final", "checkpoint-000020"}
    assert (out / "curves.png").stat().st_size > 10_000
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))
    provenance = yaml.safe_load((final / "training_config.yaml").read_text())
    assert provenance["model"]["hidden_size"] == 32 and provenance["train"]["max_steps"] == 30
    assert provenance["run"]["corpus"] == [str(tmp_path / "train.txt")]
    state = torch.load(final / "training_state.pt", weights_only=False)
    assert state["step"] == 30 and state["cursor"] == 30 * 8

    # Servable: our model + tokenizer load, and transformers reads the same checkpoint.
    ours = BertForMaskedLM.from_pretrained(final)
    tok = WordPieceTokenizer.from_pretrained(final)
    assert ours.config.vocab_size == tok.vocab_size
    assert tok.model_max_length == ours.config.max_position_embeddings == 64  # truncation fits
    ids = torch.tensor([tok.encode("a dog is an animal of the [MASK] family").ids])
    transformers = pytest.importorskip("transformers")
    hf = transformers.BertForMaskedLM.from_pretrained(final).eval()
    with torch.no_grad():
        torch.testing.assert_close(ours(ids).logits, hf(ids).logits, atol=1e-4, rtol=1e-4)
    hf_tok = transformers.BertTokenizerFast.from_pretrained(final)
    assert hf_tok.vocab_size == tok.vocab_size
    assert hf_tok("a dog is an animal")["input_ids"] == tok.encode("a dog is an animal").ids

    # bert-eval reproduces the final validation numbers (fixed masking seed).
    capsys.readouterr()
    argv = ["--checkpoint", str(final), "--corpus", str(tmp_path / "valid.txt")]
    assert evaluate.main([*argv, "--max-rows", "64", "--batch-size", "5"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["loss"] == pytest.approx(valid[-1]["valid_loss"], rel=1e-5)
    assert printed["accuracy"] == pytest.approx(valid[-1]["valid_accuracy"])
    assert printed["masked_tokens"] == valid[-1]["valid_masked_tokens"]


def test_resume_continues_bit_for_bit(tmp_path):
    extra = ["--max-steps", "10", "--grad_accum_steps", "2"]  # dropout on (train_testing)
    straight = tmp_path / "straight"
    assert main(cli_args(tmp_path, straight, *extra)) == 0
    split = tmp_path / "split"
    assert main(cli_args(tmp_path, split, *extra, "--stop-after", "4")) == 0
    assert not (split / "final").exists()
    assert CheckpointManager(split, writer=False).latest().name == "checkpoint-000004"
    assert main(cli_args(tmp_path, split, *extra, "--resume")) == 0

    a, b = params(straight / "final"), params(split / "final")
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    sa = torch.load(straight / "final" / "training_state.pt", weights_only=False)
    sb = torch.load(split / "final" / "training_state.pt", weights_only=False)
    assert sa["step"] == sb["step"] == 10 and sa["cursor"] == sb["cursor"]
    for x, y in zip(
        sa["optimizer"]["state"].values(), sb["optimizer"]["state"].values(), strict=True
    ):
        assert torch.equal(x["exp_avg_sq"], y["exp_avg_sq"])
    # A finished run resumed again has nothing to do.
    assert main(cli_args(tmp_path, split, *extra, "--resume")) == 0


def _nan_on_calls(monkeypatch, bad_calls):
    """Make the model's loss NaN on the given forward calls (0-based, training calls only)."""
    real = model.bert.BertForMaskedLM.forward
    calls = {"n": 0}

    def forward(self, *args, **kwargs):
        out = real(self, *args, **kwargs)
        if self.training:
            if calls["n"] in bad_calls or (bad_calls == "all" and calls["n"] >= 0):
                out.loss = out.loss * float("nan")
            calls["n"] += 1
        return out

    monkeypatch.setattr(model.bert.BertForMaskedLM, "forward", forward)


def test_a_non_finite_step_is_skipped_and_counted(tmp_path, monkeypatch):
    before = tmp_path / "before"
    assert main(cli_args(tmp_path, before, "--max-steps", "8", "--stop-after", "3")) == 0
    _nan_on_calls(monkeypatch, {3})
    after = tmp_path / "after"
    assert main(cli_args(tmp_path, after, "--max-steps", "8", "--stop-after", "4")) == 0
    # Step 3 had a NaN loss: no update, so the weights after step 4 equal those after step 3.
    a, b = params(before / "checkpoint-000003"), params(after / "checkpoint-000004")
    assert all(torch.equal(a[n], b[n]) for n in a)
    state = torch.load(after / "checkpoint-000004" / "training_state.pt", weights_only=False)
    assert state["skipped_steps"] == 1 and state["step"] == 4
    assert read_metrics(after / "metrics.jsonl")[-1]["skipped_steps"] == 1
    # The run goes on after an isolated NaN.
    assert main(cli_args(tmp_path, after, "--max-steps", "8", "--resume")) == 0
    assert all(torch.isfinite(p).all() for p in params(after / "final").values())


def test_consecutive_non_finite_steps_abort_with_a_clear_message(tmp_path, monkeypatch, capsys):
    _nan_on_calls(monkeypatch, set(range(4, 100)))
    out = tmp_path / "run"
    args = cli_args(tmp_path, out, "--max-steps", "20", "--save-every", "2")
    assert main([*args, "--max_consecutive_nonfinite", "3"]) == 3
    err = capsys.readouterr().err
    assert "3 consecutive steps had a non-finite loss" in err and "checkpoint-000006" in err
    assert not (out / "final").exists()
    latest = CheckpointManager(out, writer=False).latest()
    assert latest.name == "checkpoint-000006"  # steps 5 and 6 were skipped: weights as at 4
    assert all(torch.isfinite(p).all() for p in params(latest).values())


def test_time_budget_lays_the_schedule_over_the_clock(tmp_path):
    out = tmp_path / "run"
    args = cli_args(tmp_path, out, "--time-budget", "0.03", "--max-steps", "100000", valid=False)
    assert main(args) == 0
    records = read_metrics(out / "metrics.jsonl")
    state = torch.load(out / "final" / "training_state.pt", weights_only=False)
    assert 0 < state["step"] < 100000
    assert records[-1]["elapsed_s"] >= 0.03 * 60
    peak = max(r["lr"] for r in records)
    assert records[-1]["lr"] < 0.25 * peak  # the cosine ran its course with the clock


def test_line_by_line_whole_word_and_jsonl_with_a_trained_vocabulary(tmp_path):
    lines = (DATA / "wordnet.train.txt").read_text(encoding="utf-8").splitlines()[:200]
    corpus = tmp_path / "c.jsonl"
    corpus.write_text("".join(json.dumps({"text": t}) + "\n" for t in lines), encoding="utf-8")
    out = tmp_path / "run"
    args = cli_args(tmp_path, out, "--max-steps", "4", valid=False)
    i = args.index("--vocab")
    del args[i : i + 2]  # train a vocabulary from the corpus
    args[args.index("--corpus") + 1] = str(corpus)
    args += ["--model.vocab_size", "300", "--packing", "false", "--whole_word_masking", "true"]
    assert main(args) == 0
    tok = WordPieceTokenizer.from_pretrained(out / "tokenizer")
    assert 100 < tok.vocab_size <= 300
    assert "{" not in tok.vocab  # trained on the text fields, not on the JSON
    assert BertForMaskedLM.from_pretrained(out / "final").config.vocab_size == tok.vocab_size


def test_an_existing_run_is_not_overwritten_without_resume(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(cli_args(tmp_path, out, "--max-steps", "2", valid=False)) == 0
    assert main(cli_args(tmp_path, out, "--max-steps", "2", valid=False)) == 2
    assert "pass --resume" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(cli_args(tmp_path, tmp_path / "x", "--train.nonsense", "1"))
    assert "unknown train setting --train.nonsense" in capsys.readouterr().err


@pytest.mark.slow
def test_bert_tiny_200_steps_on_the_bundled_data(tmp_path):
    """Acceptance 1 in full: configs/bert_tiny.yaml, 200 steps on data/, 2 CPU cores."""
    from train_testing import REPO

    out = tmp_path / "tiny"
    valid = write_corpus(tmp_path / "valid.txt", 200, start=5000)
    argv = ["--config", str(REPO / "configs" / "bert_tiny.yaml"), "--output-dir", str(out)]
    argv += ["--corpus", str(DATA / "wordnet.train.txt"), str(DATA / "pydocs.train.txt")]
    argv += ["--valid", str(valid), "--max-steps", "200", "--cache_dir", str(tmp_path / "c")]
    argv += ["--eval_every", "100", "--log-level", "WARNING", "--progress_bar", "false"]
    assert main(argv) == 0
    train = [r["train_loss"] for r in read_metrics(out / "metrics.jsonl") if "train_loss" in r]
    assert np.mean(train[-3:]) < train[0] - 1.0  # from ~ln(V) = 9 to the unigram level and below
    transformers = pytest.importorskip("transformers")
    hf = transformers.AutoModelForMaskedLM.from_pretrained(out / "final")  # RoFormer: rotary
    ours = BertForMaskedLM.from_pretrained(out / "final")
    ids = torch.tensor([WordPieceTokenizer.from_pretrained(out / "final").encode("a cat").ids])
    with torch.no_grad():
        torch.testing.assert_close(ours(ids).logits, hf.eval()(ids).logits, atol=1e-4, rtol=1e-4)
